"""Equal tuning: one seed per steering bound for every method, then each method's best by success AUC.

Each method gets its own grid (the latent lambda, the action lambda_a, the noise bound). Every (method, bound)
becomes a method overlay of its own, ``<output-dir>/overlays/<method>_<bound>.yaml`` (the method's overlay with
``steering_scale`` and a distinct ``method_name`` such as ``zprl-0.2``), and all of them run as ONE ``zprl
compare`` with one seed: one MLflow parent run, one plot, one table, ``--jobs`` runs at once, and running the
same command again resumes it. The script then prints, per method, the bound with the highest mean success
AUC over the run's evaluations (ties: the higher final success); run the 3-seed comparison at those bounds.

    uv run python benchmarks/steering_sweep.py --base conf/zprl_online.yaml conf/tasks/reach_online.yaml --task reach \\
        --grid zprl=0.5,1,2 action_residual=0.15,0.3,0.6 noise_steering=1,1.5,2 --jobs 2
    uv run python benchmarks/steering_sweep.py --task lift -- --model.init_args.total_env_steps=100000

Default grids (the issue's, in the authors' units): latent 0.1, 0.2, 0.4; action 0.05, 0.1, 0.2; noise 1, 1.5, 2.
The runs go round-robin over the methods, each grid in the order given (the defaults start with the authors'
value: 0.2, 0.1, 1.5), so a sweep stopped early has already compared every method at its authors' setting.
Anything after ``--`` goes to every run's LightningCLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from zprl.online.compare import run_comparison

METHODS = {name: Path(__file__).resolve().parents[1] / "conf" / "methods" / f"{name}.yaml"
           for name in ("zprl", "action_residual", "noise_steering")}
GRIDS = {"zprl": (0.2, 0.1, 0.4), "action_residual": (0.1, 0.05, 0.2), "noise_steering": (1.5, 1.0, 2.0)}
SEPARATOR = "-"  # method_name of a sweep point: <method>-<bound> (MLflow metric keys allow "-")


def parse_grid(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["zprl=0.1,0.2", ...]`` -> ``{"zprl": (0.1, 0.2)}``; methods are the keys of :data:`METHODS`."""
    grids = {}
    for item in items:
        method, _, values = item.partition("=")
        if method not in METHODS or not values:
            raise ValueError(f"--grid takes METHOD=V1,V2,... with METHOD in {sorted(METHODS)}, got {item!r}.")
        grids[method] = tuple(float(v) for v in values.split(","))
    return grids


def write_overlays(grids: dict[str, tuple[float, ...]], out_dir: Path) -> list[str]:
    """One overlay per (method, bound): the method's overlay with ``steering_scale`` and ``method_name`` set.

    Listed round-robin: every method's first bound, then every method's second, and so on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in range(max(map(len, grids.values()))):
        for method, values in grids.items():
            if rank >= len(values):
                continue
            value = values[rank]
            config = OmegaConf.merge(OmegaConf.load(METHODS[method]), {"model": {"init_args": {
                "method_name": f"{method}{SEPARATOR}{value:g}", "steering_scale": value}}})
            path = out_dir / f"{method}_{value:g}.yaml"
            OmegaConf.save(config, path)
            paths.append(str(path))
    return paths


def best_per_method(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, the sweep row with the highest success AUC (then final success)."""
    points = table.assign(base_method=table["method"].str.split(SEPARATOR).str[0],
                          bound=table["method"].str.split(SEPARATOR).str[1].astype(float))
    ranked = points.sort_values(["auc", "final_success_mean"], ascending=False)
    return ranked.groupby("base_method", sort=False).head(1)[["base_method", "bound", "auc", "final_success_mean"]]


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=[], help="METHOD=V1,V2,... (replaces that method's grid)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--base", nargs="+", default=["conf/zprl_online.yaml"])
    parser.add_argument("--task", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiment", default="zprl-sweep")
    parser.add_argument("--output-dir", default="outputs/sweep")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    args = parser.parse_args(argv[:split])

    grids = {method: GRIDS[method] for method in args.methods} | parse_grid(args.grid)
    overlays = write_overlays(grids, Path(args.output_dir) / "overlays")
    table = run_comparison(overlays, base=args.base, seeds=[args.seed], task=args.task, experiment=args.experiment,
                           overrides=argv[split + 1:], output_dir=args.output_dir, jobs=args.jobs)
    print(f"\nBest bound per method (seed {args.seed}, by success AUC):")
    print(best_per_method(table).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
