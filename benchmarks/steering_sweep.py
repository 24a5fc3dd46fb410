"""Equal tuning: one seed per steering bound for every method, then each method's best by success AUC.

Each method gets its own grid (the latent lambda, the action lambda_a, the noise bound). Every (method, bound)
becomes a method overlay of its own, ``<output-dir>/overlays/<method>_<bound>.yaml`` (the method's overlay with
``steering_scale`` and a distinct ``method_name`` such as ``zprl-0.2``), and all of them run as ONE ``zprl
compare`` with one seed: one MLflow parent run, one plot, one table, ``--jobs`` runs at once, and running the
same command again resumes it. The script then prints, per method, the bound with the highest mean success
AUC over the run's evaluations (ties: the higher final success).

With ``--final-seeds 1 2 3`` it goes on to the issue's second phase, a second resumable comparison (experiment
``<experiment>-final``, under ``<output-dir>/final``): every method at its best bound under its plain name, the
two frozen bases (``base_policy``, ``base_policy_raw``) and the no-bottleneck ablation at ZPRL's best lambda,
under seeds other than the tuning seed (nothing reported is tuned on its own seeds). The ablation is
``zprl_raw``, the same steering on the raw embedding of the same policy (its generator trained on e: VIB trained
decoupled or post hoc), or, given ``--no-bottleneck-policy``, ``zprl_no_bottleneck`` on a policy pretrained
without the VIB (needed when the VIB trained jointly). Run the same command again and both phases resume.
``--best zprl=0.4 action_residual=0.1 noise_steering=1`` skips the sweep and takes those bounds, e.g. an earlier
sweep's recorded result (``benchmarks/RESULTS.md``) when its MLflow store is gone.

    uv run python benchmarks/steering_sweep.py --base conf/zprl_online.yaml conf/tasks/reach_online.yaml --task reach \\
        --grid zprl=0.5,1,2 action_residual=0.15,0.3,0.6 noise_steering=1,1.5,2 --jobs 2
    uv run python benchmarks/steering_sweep.py --base conf/zprl_online.yaml conf/tasks/can_online.yaml --task can \\
        --policy outputs/pretrain/can_flow_z16/policy --final-seeds 1 2 3 --jobs 2

Default grids (the issue's, in the authors' units): latent 0.1, 0.2, 0.4; action 0.05, 0.1, 0.2; noise 1, 1.5, 2.
The runs go round-robin over the methods, each grid in the order given (the defaults start with the authors'
value: 0.2, 0.1, 1.5), so a sweep stopped early has already compared every method at its authors' setting.
Anything after ``--`` goes to every run's LightningCLI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from zprl.online.compare import run_comparison

CONF_METHODS = Path(__file__).resolve().parents[1] / "conf" / "methods"
METHODS = {name: CONF_METHODS / f"{name}.yaml" for name in ("zprl", "action_residual", "noise_steering")}
GRIDS = {"zprl": (0.2, 0.1, 0.4), "action_residual": (0.1, 0.05, 0.2), "noise_steering": (1.5, 1.0, 2.0)}
SEPARATOR = "-"  # method_name of a sweep point: <method>-<bound> (MLflow metric keys allow "-")
FROZEN_BASES = ("base_policy", "base_policy_raw")  # the final phase's reference rows (no learning)
ABLATIONS = ("zprl_raw", "zprl_no_bottleneck")  # ZPRL's steering on e: of the same policy / of another one


def parse_grid(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["zprl=0.1,0.2", ...]`` -> ``{"zprl": (0.1, 0.2)}``; methods are the keys of :data:`METHODS`."""
    grids = {}
    for item in items:
        method, _, values = item.partition("=")
        if method not in METHODS or not values:
            raise ValueError(f"--grid takes METHOD=V1,V2,... with METHOD in {sorted(METHODS)}, got {item!r}.")
        grids[method] = tuple(float(v) for v in values.split(","))
    return grids


def write_overlay(method_config: Path, out_path: Path, name: str, bound: float | None = None,
                  policy: str | None = None) -> str:
    """``method_config`` with ``method_name`` (and the steering bound and policy path when given), saved."""
    init_args = {"method_name": name}
    if bound is not None:
        init_args["steering_scale"] = bound
    if policy is not None:
        init_args["policy_path"] = policy
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(method_config), {"model": {"init_args": init_args}}), out_path)
    return str(out_path)


def write_overlays(grids: dict[str, tuple[float, ...]], out_dir: Path) -> list[str]:
    """One overlay per (method, bound): the method's overlay with ``steering_scale`` and ``method_name`` set.

    Listed round-robin: every method's first bound, then every method's second, and so on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in range(max(map(len, grids.values()))):
        for method, values in grids.items():
            if rank < len(values):
                value = values[rank]
                paths.append(write_overlay(METHODS[method], out_dir / f"{method}_{value:g}.yaml",
                                           f"{method}{SEPARATOR}{value:g}", value))
    return paths


def write_final_overlays(best: pd.DataFrame, out_dir: Path, policy: str | None = None,
                         no_bottleneck_policy: str | None = None) -> list[str]:
    """The final phase's overlays: the frozen bases, each method at its best bound, and the ablation.

    The policies are written into the overlays (the ablation steers its own), so they go in a folder named by
    a hash of both paths and a file name holds its bound: other policies or another best bound (a grown grid)
    make another comparison (``zprl compare`` keys on overlay paths and refuses edited contents).
    """
    bounds = dict(zip(best["base_method"], best["bound"], strict=True))
    if no_bottleneck_policy is not None and "zprl" not in bounds:
        raise ValueError("The no-bottleneck ablation steers at ZPRL's best lambda: keep zprl in --methods.")
    policies = [str(Path(path).resolve()) if path else None for path in (policy, no_bottleneck_policy)]
    out_dir = out_dir / hashlib.sha256(json.dumps(policies).encode()).hexdigest()[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_overlay(CONF_METHODS / f"{name}.yaml", out_dir / f"{name}.yaml", name, policy=policy)
             for name in FROZEN_BASES]
    for method, bound in bounds.items():
        paths.append(write_overlay(METHODS[method], out_dir / f"{method}_{bound:g}.yaml", method, bound, policy))
    if "zprl" in bounds:
        ablation = ABLATIONS[no_bottleneck_policy is not None]
        paths.append(write_overlay(CONF_METHODS / f"{ablation}.yaml", out_dir / f"{ablation}_{bounds['zprl']:g}.yaml",
                                   ablation, bounds["zprl"], no_bottleneck_policy or policy))
    return paths


def check_phases(sweep_seed: int, final_seeds: list[int], policy: str | None, no_bottleneck_policy: str | None,
                 overrides: list[str]) -> None:
    """Reject two policies, or a final phase that would report on its tuning seed or lose the ablation's policy."""
    policy_overridden = any("policy_path" in override for override in overrides)
    if policy is not None and policy_overridden:
        raise ValueError("The policy is given twice (--policy and a policy_path override after --): keep one.")
    if sweep_seed in final_seeds:
        raise ValueError(f"--final-seeds {final_seeds} includes the tuning seed {sweep_seed}: report on other "
                         "seeds (e.g. --final-seeds 1 2 3 after a sweep on seed 0).")
    if no_bottleneck_policy is not None and not final_seeds:
        raise ValueError("--no-bottleneck-policy is used by the final phase only: add --final-seeds.")
    if no_bottleneck_policy is not None and policy_overridden:
        raise ValueError("A policy_path override after -- would replace the ablation's policy too: give the "
                         "base policy with --policy instead.")


def recorded_best(items: list[str]) -> pd.DataFrame:
    """``["zprl=0.4", ...]`` -> the rows :func:`best_per_method` gives (one bound per method, no AUC)."""
    grids = parse_grid(items)
    if any(len(values) != 1 for values in grids.values()):
        raise ValueError(f"--best takes one bound per method (METHOD=BOUND), got {items}.")
    return pd.DataFrame({"base_method": list(grids), "bound": [values[0] for values in grids.values()]})


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
    parser.add_argument("--policy", default=None,
                        help="the pretrained policy every run steers (the sweep's first override; written into "
                             "the final phase's overlays)")
    parser.add_argument("--final-seeds", type=int, nargs="+", default=[],
                        help="then compare each method's best bound and the frozen bases under these seeds")
    parser.add_argument("--no-bottleneck-policy", default=None,
                        help="a policy pretrained without the VIB for the final phase's ablation "
                             "(default: the raw embedding of the same policy)")
    parser.add_argument("--best", nargs="+", default=[], metavar="METHOD=BOUND",
                        help="skip the sweep and run the final phase at these bounds (an earlier sweep's result "
                             "on --seed); needs --final-seeds")
    args = parser.parse_args(argv[:split])
    if args.best and (args.grid or not args.final_seeds):
        parser.error("--best replaces the sweep: give it with --final-seeds and without --grid.")
    overrides = argv[split + 1:]
    check_phases(args.seed, args.final_seeds, args.policy, args.no_bottleneck_policy, overrides)

    if args.best:
        best = recorded_best(args.best)
        given = ", ".join(f"{method}={bound:g}" for method, bound in zip(best.base_method, best.bound, strict=True))
        print(f"\nBest bound per method (given, sweep skipped): {given}")
    else:
        grids = {method: GRIDS[method] for method in args.methods} | parse_grid(args.grid)
        overlays = write_overlays(grids, Path(args.output_dir) / "overlays")
        # the sweep takes the policy as its first override (as a sweep started with it after -- did)
        sweep_overrides = ([f"--model.init_args.policy_path={args.policy}"] if args.policy else []) + overrides
        table = run_comparison(overlays, base=args.base, seeds=[args.seed], task=args.task,
                               experiment=args.experiment, overrides=sweep_overrides, output_dir=args.output_dir,
                               jobs=args.jobs)
        best = best_per_method(table)
        print(f"\nBest bound per method (seed {args.seed}, by success AUC):")
        print(best.to_markdown(index=False, floatfmt=".3g"))
    if args.final_seeds:
        final = write_final_overlays(best, Path(args.output_dir) / "final_overlays", args.policy,
                                     args.no_bottleneck_policy)
        run_comparison(final, base=args.base, seeds=args.final_seeds, task=args.task,
                       experiment=f"{args.experiment}-final", overrides=overrides,
                       output_dir=Path(args.output_dir) / "final", jobs=args.jobs)


if __name__ == "__main__":
    main()
