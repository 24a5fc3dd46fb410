"""``zprl compare``: methods x seeds online runs under one MLflow parent run, with plots and a summary table."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
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
ARTIFACTS = ("success_vs_env_steps.png", "diagnostics_vs_env_steps.png", "summary.csv", "summary.md")
# the learners' logged curves that explain a success curve (README: the SAC paragraph)
DIAGNOSTIC_METRICS = ("train/entropy", "train/alpha", "train/q_mean", "train/residual_abs", "rollout/step_rms",
                      "rollout/step_to_z_ratio")
BASE_METHOD = "base_policy"  # its mean final success sets the sample-efficiency target (base + TARGET_MARGIN)
TARGET_MARGIN = 0.1
BOOTSTRAP_RESAMPLES = 10_000
COMPARE_KEY_TAG = "zprl.compare_key"  # hash of a comparison's arguments: a rerun finds and resumes its parent
CONFIGS_TAG = "zprl.compare_configs"  # hash of the configs' contents: a resume refuses edited configs
UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")


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
        return first_crossing(self.env_steps, self.mean, threshold)

    def auc(self) -> np.ndarray:
        """Per seed: area under success vs env steps divided by the step range (a mean success in [0, 1])."""
        if len(self.env_steps) == 1:
            return self.success[:, 0].astype(float)
        return np.trapezoid(self.success, self.env_steps, axis=1) / (self.env_steps[-1] - self.env_steps[0])


def first_crossing(env_steps: np.ndarray, success: np.ndarray, threshold: float) -> float:
    """First of ``env_steps`` at which ``success`` reaches ``threshold`` (NaN if never)."""
    hits = np.nonzero(success >= threshold)[0]
    return float(env_steps[hits[0]]) if len(hits) else float("nan")


def bootstrap_ci(samples: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows (seeds) of ``samples``, with a fixed seed.

    NaN samples are dropped first (a seed that logged no value). A statistic that is NaN on a resample
    (e.g. a success level never reached) counts as +inf, so such an interval's upper end is NaN when more
    than ``(1 - level) / 2`` of the resamples never got there. One seed gives a zero-width interval.
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples).reshape(len(samples), -1).all(axis=1)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    rows = np.random.default_rng(seed).integers(0, len(samples), size=(resamples, len(samples)))
    stats = np.array([statistic(samples[r]) for r in rows], dtype=float)
    stats[np.isnan(stats)] = np.inf
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):  # inf - inf between two never-reached resamples: NaN
        low, high = np.percentile(stats, [tail, 100 - tail])
    return tuple(float(v) if np.isfinite(v) else float("nan") for v in (low, high))


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


def summary_table(client: MlflowClient, curves: list[MethodCurve], runs: dict[str, list[str]],
                  resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Per method: final success, sample efficiency and smoothness over seeds, with 95 % bootstrap intervals.

    Columns: ``final_success_mean/std/lo/hi`` (the last evaluation), ``steps_to_50`` / ``steps_to_80`` (first
    nominal step where the seed-mean success reaches it), ``final_return``, ``jerk`` and ``action_delta``
    (mean |delta a|) with ``_lo/_hi``, ``auc`` (area under success vs env steps over the step range, i.e. the
    mean success over training) with ``auc_lo/hi``, and ``target`` = base + 0.1 with ``steps_to_target`` and
    its interval. The base is the ``base_policy`` method's mean final success when it is in the comparison,
    else each method's own mean success at its first evaluation (step 0). NaN: never reached.
    """
    finals = {curve.method: {key: np.array([client.get_run(r).data.metrics.get(key, np.nan)
                                            for r in runs[curve.method]]) for key in SUMMARY_METRICS}
              for curve in curves}
    base = float(np.mean(finals[BASE_METHOD][SUCCESS_METRIC])) if BASE_METHOD in finals else None
    rows = []
    for curve in curves:
        final = finals[curve.method]
        target = (curve.mean[0] if base is None else base) + TARGET_MARGIN
        auc = curve.auc()

        def interval(samples, statistic=np.mean):
            return bootstrap_ci(samples, statistic, resamples=resamples)

        def to_target(success, steps=curve.env_steps, target=target):
            return first_crossing(steps, success.mean(0), target)

        row = {"method": curve.method, "seeds": len(runs[curve.method]),
               "final_success_mean": float(np.mean(final[SUCCESS_METRIC])),
               "final_success_std": float(np.std(final[SUCCESS_METRIC])),
               "steps_to_50": curve.steps_to(0.5), "steps_to_80": curve.steps_to(0.8),
               "final_return": float(np.nanmean(final["eval/mean_return"])),
               "jerk": float(np.nanmean(final["eval/jerk"])),
               "action_delta": float(np.nanmean(final["eval/action_delta"]))}
        row["final_success_lo"], row["final_success_hi"] = interval(final[SUCCESS_METRIC])
        row["auc"] = float(auc.mean())
        row["auc_lo"], row["auc_hi"] = interval(auc)
        row["target"] = float(target)
        row["steps_to_target"] = to_target(curve.success)
        row["steps_to_target_lo"], row["steps_to_target_hi"] = interval(curve.success, to_target)
        row["jerk_lo"], row["jerk_hi"] = interval(final["eval/jerk"])
        row["action_delta_lo"], row["action_delta_hi"] = interval(final["eval/action_delta"])
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary table as markdown, each statistic as ``mean [95 % CI]`` (NaN: never reached)."""
    def cell(row: dict, key: str, fmt: str, mean_key: str | None = None) -> str:
        value = format(row[mean_key or key], fmt)
        if row["seeds"] < 2:
            return value
        return f"{value} [{format(row[key + '_lo'], fmt)}, {format(row[key + '_hi'], fmt)}]"

    rows = [{"method": row["method"], "seeds": row["seeds"],
             "final success": cell(row, "final_success", ".2f", "final_success_mean"),
             "success AUC": cell(row, "auc", ".2f"),
             f"target (base + {TARGET_MARGIN})": f"{row['target']:.2f}",
             "env steps to target": cell(row, "steps_to_target", ".0f"),
             "jerk": cell(row, "jerk", ".3g"), "mean abs delta a": cell(row, "action_delta", ".3g")}
            for row in table.to_dict("records")]
    return pd.DataFrame(rows).to_markdown(index=False)


def success_figure(curves: list[MethodCurve], title: str) -> plt.Figure:
    """Success rate vs (nominal) env steps: seed mean with a ±1 std band per method.

    A method evaluated once (a frozen base) is drawn flat, dashed, over the other methods' step range.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))  # matplotlib picks a non-interactive backend when headless
    span = np.array([min(c.env_steps[0] for c in curves), max(c.env_steps[-1] for c in curves)])
    for curve in curves:
        steps, mean, std, style = curve.env_steps, curve.mean, curve.std, {"marker": "o"}
        if len(steps) == 1:
            steps, mean, std, style = span, np.repeat(mean, 2), np.repeat(std, 2), {"linestyle": "--"}
        ax.plot(steps, mean, label=curve.method, **style)
        ax.fill_between(steps, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.2)
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


def diagnostics_figure(client: MlflowClient, runs: dict[str, list[str]], title: str) -> plt.Figure:
    """:data:`DIAGNOSTIC_METRICS` vs env steps, a panel each, a line per run coloured by method.

    A run that never logged a metric (a frozen base learns nothing; only latent steering logs
    ``rollout/step_to_z_ratio``) has no line in its panel.
    """
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend = {}
    for ax, key in zip(axes.flat, DIAGNOSTIC_METRICS, strict=True):
        for k, (method, run_ids) in enumerate(runs.items()):
            for run_id in run_ids:
                steps, values = metric_history(client, run_id, key)
                if len(steps):
                    (legend[method],) = ax.plot(steps, values, color=colours[k % len(colours)], lw=0.8, alpha=0.7)
        ax.set(title=key, xlabel="environment steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=max(len(legend), 1))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def run_one(base: list[str], method: str, seed: int, run_id: str, experiment: str, root_dir: Path,
            task: str | None, overrides: list[str], ckpt_path: Path | None = None) -> None:
    """One online run (base configs + method overlay) in a fresh process, logging into MLflow run ``run_id``.

    ``ckpt_path``: resume from this checkpoint (Lightning's ``--ckpt_path``).
    """
    configs = [arg for config in [*base, method] for arg in ("-c", config)]
    args = ["fit", *configs, f"--seed_everything={seed}", f"--model.init_args.seed={seed}",
            f"--trainer.default_root_dir={root_dir}",
            f"--trainer.logger.init_args.run_id={run_id}",
            f"--trainer.logger.init_args.experiment_name={experiment}",
            f"--trainer.logger.init_args.tracking_uri={tracking_uri()}"]
    if task:
        args.append(f"--model.init_args.task={task}")
    if ckpt_path is not None:
        args.append(f"--ckpt_path={ckpt_path}")
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


def comparison_key(configs: list[str], base: list[str], seeds: list[int], task: str | None, experiment: str,
                   overrides: list[str], output_dir: str | Path) -> str:
    """A hash of a comparison's arguments (paths resolved): the same arguments give the same key."""
    def resolved(paths):
        return [str(Path(path).resolve()) for path in paths]

    arguments = {"methods": resolved(configs), "base": resolved(base), "seeds": list(seeds), "task": task,
                 "experiment": experiment, "overrides": list(overrides), "output_dir": str(Path(output_dir).resolve())}
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]


def configs_digest(paths: list[str | Path]) -> str:
    """A hash of the configs' parsed contents, in order (comments and formatting aside)."""
    contents = [OmegaConf.to_yaml(OmegaConf.load(path)) for path in paths]
    return hashlib.sha256(json.dumps(contents).encode()).hexdigest()[:16]


def check_configs_unchanged(client: MlflowClient, parent_id: str, digest: str) -> None:
    """A resumed comparison must run the configs its finished runs ran (a parent without the tag passes)."""
    recorded = client.get_run(parent_id).data.tags.get(CONFIGS_TAG)
    if recorded is not None and recorded != digest:
        raise ValueError(f"The configs of comparison {parent_id} changed since it started (contents {recorded}, now "
                         f"{digest}), so its finished runs ran other settings. Restore the configs to resume it, or "
                         "start a new comparison with another --output-dir or --experiment.")


def find_parent_run(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """The latest parent run of ``experiment_id`` tagged with comparison ``key`` (None if there is none)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{COMPARE_KEY_TAG}` = '{key}'",
                               order_by=["attributes.start_time DESC"])
    parents = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    return parents[0].info.run_id if parents else None


def existing_children(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[tuple[str, int], tuple]:
    """``{(method, seed): (run_id, status)}`` of the child runs of ``parent_id``."""
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {(c.data.tags["method"], int(c.data.tags["seed"])): (c.info.run_id, c.info.status) for c in children}


def resume_checkpoint(root_dir: Path) -> Path | None:
    """``root_dir/checkpoints/last.ckpt`` if an earlier attempt of the run wrote it, else None (fresh start)."""
    last = Path(root_dir) / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


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


def plan_children(client: MlflowClient, experiment_id: str, parent_id: str, configs: list[str], names: list[str],
                  seeds: list[int], out_dir: Path, shared: tuple) -> tuple[dict[str, list[str]], list[tuple]]:
    """Child run ids per method and the launches still to do: a FINISHED child is skipped, an unfinished one
    (RUNNING, SCHEDULED, FAILED, KILLED) reruns in its own MLflow run from its ``last.ckpt`` when it has one,
    and a missing one is created. ``shared`` is ``(base, experiment, task, overrides)``.

    Launches go seed by seed (every method's first seed, then every method's second), so a comparison stopped
    early has compared all its methods on the same seeds."""
    base, experiment, task, overrides = shared
    previous = existing_children(client, experiment_id, parent_id)
    runs: dict[str, list[str]] = {name: [] for name in names}
    launches = []
    for seed in seeds:
        for config, name in zip(configs, names, strict=True):
            root_dir = out_dir / f"{name}_seed{seed}"
            run_id, status = previous.get((name, seed), (None, None))
            if run_id is None:
                run_id = create_child_run(client, experiment_id, parent_id, name, seed, root_dir)
            runs[name].append(run_id)
            if status == "FINISHED":
                print(f"  {name} seed {seed}: finished earlier (MLflow run {run_id}), skipped", flush=True)
                continue
            ckpt = resume_checkpoint(root_dir) if status in UNFINISHED else None
            if status is not None:
                print(f"  {name} seed {seed}: {status}, rerun {f'from {ckpt}' if ckpt else 'from the start'}",
                      flush=True)
            launches.append((name, seed, (base, config, seed, run_id, experiment, root_dir, task, overrides, ckpt)))
    return runs, launches


def run_comparison(configs: list[str], base: str | list[str] = "conf/zprl_online.yaml", seeds: list[int] = (0, 1, 2),
                   task: str | None = None, experiment: str = "zprl-compare", overrides: list[str] = (),
                   output_dir: str | Path = "outputs/compare", jobs: int = 1) -> pd.DataFrame:
    """Run every method overlay on ``base`` under every seed as child runs of one MLflow parent run.

    ``base`` is the online config, or a list of configs applied in order (e.g. the online config and a
    task overlay); each method overlay and then ``overrides`` go on top. ``jobs`` runs that many runs
    at once (separate processes; mind the cores and GPU memory they share).

    The parent run gets the success-vs-env-steps plot (seed mean and spread per method), the learners'
    diagnostics (:func:`diagnostics_figure`: entropy, temperature, Q, residual size, RMS ratio) and the
    summary table (:func:`summary_table`: final success, success AUC, env steps to base + 0.1, jerk and
    mean |delta a|, with 95 % bootstrap intervals over seeds) as artifacts.

    Run again with the same arguments (``jobs`` aside), it resumes: the parent run tagged with the same
    :func:`comparison_key` is reused, finished child runs are skipped and unfinished ones rerun in their own
    MLflow runs from ``<run folder>/checkpoints/last.ckpt`` when it exists. The key holds the configs' paths;
    their contents are checked separately (:func:`check_configs_unchanged`), so an edited config is refused.
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
        raise ValueError(f"Two configs share a method name ({names}); give each a distinct "
                         "model.init_args.method_name.")
    key = comparison_key(configs, base, seeds, task, experiment, overrides, output_dir)
    parent_id = find_parent_run(client, experiment_id, key)
    digest = configs_digest([*base, *configs])
    if parent_id:
        check_configs_unchanged(client, parent_id, digest)
        print(f"Resuming comparison {parent_id} (same arguments, key {key}): finished runs are skipped.", flush=True)
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"compare-{task or 'configs'}",
                          tags={COMPARE_KEY_TAG: key, CONFIGS_TAG: digest}) as parent:
        if parent_id is None:
            mlflow.log_params({"base": ",".join(map(str, base)), "methods": ",".join(configs),
                               "seeds": ",".join(map(str, seeds)), "task": task or "from config"})
        out_dir = Path(output_dir) / parent.info.run_id
        runs, launches = plan_children(client, experiment_id, parent.info.run_id, configs, names, seeds, out_dir,
                                       (base, experiment, task, list(overrides)))
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
        diagnostics = diagnostics_figure(client, runs, f"{task or 'task'}: the learners' diagnostics")
        diagnostics.savefig(out_dir / "diagnostics_vs_env_steps.png", dpi=100)
        plt.close(diagnostics)
        table.to_csv(out_dir / "summary.csv", index=False)
        markdown = summary_markdown(table)
        (out_dir / "summary.md").write_text(markdown + "\n")
        for name in ARTIFACTS:
            mlflow.log_artifact(str(out_dir / name))
        for row in table.itertuples():
            mlflow.log_metrics({f"{row.method}/final_success_mean": row.final_success_mean,
                                f"{row.method}/success_auc": row.auc})
    print(markdown)
    print("\n".join(comparison_summary(experiment, parent.info.run_id, out_dir)))
    return table
