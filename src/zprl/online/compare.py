"""``zprl compare``: methods x seeds online runs under one MLflow parent run, with plots and a summary table."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from zprl.tracking import prepare_tracking, tracking_uri

SUCCESS_METRIC = "eval/success_rate"
SUMMARY_METRICS = ("eval/success_rate", "eval/mean_return", "eval/jerk", "eval/action_delta")
EVAL_EVERY_PARAM = "model.init_args.eval_every_env_steps"  # as logged by zprl.tracking.MLflowSaveConfigCallback
ARTIFACTS = ("success_vs_env_steps.png", "summary.csv", "summary.md")


@dataclass
class MethodCurve:
    """Evaluation success of one method: a (seeds x eval points) matrix over env steps."""

    method: str
    env_steps: np.ndarray
    success: np.ndarray  # (num_seeds, num_points)

    @property
    def mean(self) -> np.ndarray:
        return self.success.mean(0)

    @property
    def std(self) -> np.ndarray:
        return self.success.std(0)

    def steps_to(self, threshold: float) -> float:
        """First env step at which the seed-mean success reaches ``threshold`` (NaN if never)."""
        hits = np.nonzero(self.mean >= threshold)[0]
        return float(self.env_steps[hits[0]]) if len(hits) else float("nan")


def method_name(config_path: str | Path) -> str:
    """A method's name: ``model.init_args.method_name`` of its overlay, else the file stem."""
    config = OmegaConf.load(config_path)
    return str(OmegaConf.select(config, "model.init_args.method_name", default=None) or Path(config_path).stem)


def metric_history(client: MlflowClient, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return np.array([m.step for m in history]), np.array([m.value for m in history])


def nominal_steps(steps: np.ndarray, eval_every: int) -> np.ndarray:
    """Evaluation env steps binned to the nearest multiple of ``eval_every`` (the scheduled evaluation step)."""
    return (np.rint(np.asarray(steps) / eval_every) * eval_every).astype(np.int64)


def eval_interval(client: MlflowClient, run_id: str) -> int:
    """A run's ``eval_every_env_steps``, read from its logged config."""
    value = client.get_run(run_id).data.params.get(EVAL_EVERY_PARAM)
    if value is None:
        raise ValueError(f"Run {run_id} has no {EVAL_EVERY_PARAM} param; pass eval_every to method_curve.")
    return int(value)


def method_curve(client: MlflowClient, method: str, run_ids: list[str], eval_every: int | None = None) -> MethodCurve:
    """The seeds' success histories on the nominal evaluation steps.

    An iteration collects whole vector-env steps, so a seed evaluates up to ``num_envs - 1`` env steps after the
    scheduled step, and seeds differ. Each evaluation is binned to the nearest multiple of ``eval_every``
    (default: the first run's ``eval_every_env_steps``; the last evaluation of a bin counts), and a seed that
    skipped a bin holds its previous value. The grid starts at the latest first evaluation of the seeds.
    """
    every = eval_every or eval_interval(client, run_ids[0])
    histories = []
    for run_id in run_ids:
        steps, values = metric_history(client, run_id, SUCCESS_METRIC)
        if len(steps) == 0:
            raise RuntimeError(f"A {method} run logged no {SUCCESS_METRIC}; check its eval_every_env_steps.")
        binned = nominal_steps(steps, every)
        last_in_bin = np.append(binned[1:] != binned[:-1], True)
        histories.append((binned[last_in_bin], values[last_in_bin]))
    grid = np.unique(np.concatenate([steps for steps, _ in histories]))
    grid = grid[grid >= max(steps[0] for steps, _ in histories)]
    success = np.stack([values[np.searchsorted(steps, grid, side="right") - 1] for steps, values in histories])
    return MethodCurve(method, grid, success)


def summary_table(client: MlflowClient, curves: list[MethodCurve], runs: dict[str, list[str]]) -> pd.DataFrame:
    """Final success (mean ± std over seeds), steps to 50 % / 80 % success, return and smoothness."""
    rows = []
    for curve in curves:
        finals = {key: [client.get_run(r).data.metrics.get(key, np.nan) for r in runs[curve.method]]
                  for key in SUMMARY_METRICS}
        rows.append({
            "method": curve.method,
            "seeds": len(runs[curve.method]),
            "final_success_mean": float(np.mean(finals[SUCCESS_METRIC])),
            "final_success_std": float(np.std(finals[SUCCESS_METRIC])),
            "steps_to_50": curve.steps_to(0.5),
            "steps_to_80": curve.steps_to(0.8),
            "final_return": float(np.nanmean(finals["eval/mean_return"])),
            "jerk": float(np.nanmean(finals["eval/jerk"])),
            "action_delta": float(np.nanmean(finals["eval/action_delta"])),
        })
    return pd.DataFrame(rows)


def success_figure(curves: list[MethodCurve], title: str) -> plt.Figure:
    """Success rate vs (nominal) env steps: seed mean with a ±1 std band per method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))  # matplotlib picks a non-interactive backend when headless
    for curve in curves:
        ax.plot(curve.env_steps, curve.mean, marker="o", label=curve.method)
        ax.fill_between(curve.env_steps, np.clip(curve.mean - curve.std, 0, 1),
                        np.clip(curve.mean + curve.std, 0, 1), alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="success rate", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_success(curves: list[MethodCurve], title: str, path: Path) -> Path:
    """:func:`success_figure` saved as an image at ``path``."""
    fig = success_figure(curves, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_one(base: list[str], method: str, seed: int, run_id: str, experiment: str, root_dir: Path,
            task: str | None, overrides: list[str]) -> None:
    """One online run (base configs + method overlay) in a fresh process, logging into MLflow run ``run_id``."""
    configs = [arg for config in [*base, method] for arg in ("-c", config)]
    args = ["fit", *configs, f"--seed_everything={seed}", f"--model.init_args.seed={seed}",
            f"--trainer.default_root_dir={root_dir}",
            f"--trainer.logger.init_args.run_id={run_id}",
            f"--trainer.logger.init_args.experiment_name={experiment}",
            f"--trainer.logger.init_args.tracking_uri={tracking_uri()}"]
    if task:
        args.append(f"--model.init_args.task={task}")
    command = [sys.executable, "-c", "from zprl.cli import lightning_main; lightning_main()",
               *args, *overrides]
    subprocess.run(command, check=True)


def create_child_run(client: MlflowClient, experiment_id: str, parent_id: str, name: str, seed: int,
                     root_dir: Path) -> str:
    """A child run of ``parent_id`` in status SCHEDULED (it shows RUNNING only once its process starts)."""
    child = client.create_run(experiment_id, run_name=f"{name}-seed{seed}",
                              tags={"mlflow.parentRunId": parent_id, "method": name, "seed": str(seed),
                                    "root_dir": str(root_dir.resolve())})
    client.update_run(child.info.run_id, status="SCHEDULED")
    return child.info.run_id


def run_child(client: MlflowClient, index: int, total: int, name: str, seed: int, launch: tuple) -> None:
    """``run_one(*launch)`` between "run k/N" headers; its MLflow run goes RUNNING, then FAILED if it fails."""
    run_id = launch[3]
    print(f"\n=== run {index}/{total}: {name} seed {seed} (MLflow run {run_id}) ===", flush=True)
    client.update_run(run_id, status="RUNNING")
    start = time.monotonic()
    try:
        run_one(*launch)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        print(f"=== run {index}/{total}: {name} seed {seed} FAILED after {time.monotonic() - start:.0f} s ===",
              flush=True)
        raise
    print(f"=== run {index}/{total}: {name} seed {seed} done in {(time.monotonic() - start) / 60:.1f} min ===",
          flush=True)


def comparison_summary(experiment: str, parent_id: str, out_dir: Path) -> list[str]:
    """Where a comparison's results are and how to look at them."""
    return [f"\nComparison finished: MLflow experiment {experiment}, parent run {parent_id} ({tracking_uri()})",
            f"  plot and table: {', '.join(str(out_dir / name) for name in ARTIFACTS)} (also run artifacts)",
            f"  run folders (checkpoints): {out_dir}",
            "Next:",
            f"  ZPRL_COMPARE_EXPERIMENT={experiment} uv run jupyter-execute notebooks/compare_methods.ipynb",
            f"  uv run mlflow ui --backend-store-uri {tracking_uri()}"]


def run_comparison(configs: list[str], base: str | list[str] = "conf/zprl_online.yaml", seeds: list[int] = (0, 1, 2),
                   task: str | None = None, experiment: str = "zprl-compare", overrides: list[str] = (),
                   output_dir: str | Path = "outputs/compare", jobs: int = 1) -> pd.DataFrame:
    """Run every method overlay on ``base`` under every seed as child runs of one MLflow parent run.

    ``base`` is the online config, or a list of configs applied in order (e.g. the online config and a
    task overlay); each method overlay and then ``overrides`` go on top. ``jobs`` runs that many runs
    at once (separate processes; mind the cores and GPU memory they share).

    The parent run gets the success-vs-env-steps plot (seed mean and spread per method) and the
    summary table (final success, steps to 50 % / 80 %, return, jerk) as artifacts.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    base = [base] if isinstance(base, str | Path) else list(base)
    for config in [*base, *configs]:
        if not Path(config).exists():
            raise FileNotFoundError(f"Config {config} not found; methods live in conf/methods/, the base in "
                                    f"conf/zprl_online.yaml.")
    mlflow.set_tracking_uri(prepare_tracking(tracking_uri()))  # schema created once, before the runs start
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    client = MlflowClient()
    names = [method_name(c) for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"Two configs share a method name ({names}); give each a distinct model.init_args.method_name.")
    with mlflow.start_run(run_name=f"compare-{task or 'configs'}") as parent:
        mlflow.log_params({"base": ",".join(map(str, base)), "methods": ",".join(configs), "seeds": ",".join(map(str, seeds)), "task": task or "from config"})
        runs: dict[str, list[str]] = {}
        launches = []
        out_dir = Path(output_dir) / parent.info.run_id
        for config, name in zip(configs, names):
            for seed in seeds:
                root_dir = out_dir / f"{name}_seed{seed}"
                run_id = create_child_run(client, experiment_id, parent.info.run_id, name, seed, root_dir)
                launches.append((name, seed, (base, config, seed, run_id, experiment, root_dir, task, list(overrides))))
                runs.setdefault(name, []).append(run_id)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_child, client, k, len(launches), name, seed, launch)
                       for k, (name, seed, launch) in enumerate(launches, start=1)]
            for finished in futures:
                finished.result()  # re-raises a failed run
        curves = [method_curve(client, name, runs[name]) for name in names]
        table = summary_table(client, curves, runs)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_success(curves, f"{task or 'task'}: success vs env steps ({len(seeds)} seeds)",
                     out_dir / "success_vs_env_steps.png")
        table.to_csv(out_dir / "summary.csv", index=False)
        (out_dir / "summary.md").write_text(table.to_markdown(index=False, floatfmt=".3f"))
        for name in ARTIFACTS:
            mlflow.log_artifact(str(out_dir / name))
        for row in table.itertuples():
            mlflow.log_metric(f"{row.method}/final_success_mean", row.final_success_mean)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print("\n".join(comparison_summary(experiment, parent.info.run_id, out_dir)))
    return table
