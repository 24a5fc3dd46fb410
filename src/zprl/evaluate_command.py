"""``zprl evaluate``: roll out a pretrained policy, write the results next to it and log them as an MLflow run.

Results go to ``<policy folder>/eval_<task>_<seed>.json`` (for a ``.ckpt``: next to the checkpoint) and to an
MLflow run in the ``zprl-evaluate`` experiment (params, metrics, the JSON and any videos as artifacts).
Start-up is slow on small machines (the policy imports torch and LeRobot, every env worker imports the
simulator), so each phase shows a spinner with its elapsed time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zprl.evaluation import EVAL_SEED_OFFSET
from zprl.progress import phase

EXPERIMENT = "zprl-evaluate"


@dataclass
class EvaluateOptions:
    """What ``zprl evaluate`` was asked to do (its command-line arguments)."""

    policy: str
    task: str = "lift"
    episodes: int = 50
    num_envs: int = 4
    seed: int = EVAL_SEED_OFFSET
    device: str | None = None  # None: cuda when available
    video_dir: str | None = None
    experiment: str = EXPERIMENT
    mlflow: bool = True


def results_path(policy: str | Path, task: str, seed: int) -> Path:
    """``<policy>/eval_<task>_<seed>.json`` for a policy folder, the checkpoint's folder for a ``.ckpt``."""
    policy = Path(policy)
    folder = policy if policy.is_dir() else policy.parent
    return folder / f"eval_{task}_{seed}.json"


def run_evaluate(options: EvaluateOptions) -> dict:
    """Evaluate, write the JSON results, log the MLflow run; returns the JSON content (and where it went)."""
    with phase(f"Loading the policy from {options.policy} (imports torch and LeRobot)"):
        import torch

        from zprl.envs import get_task, make_vector_env
        from zprl.evaluation import Evaluator
        from zprl.policy_io import check_policy_matches_env, env_kwargs_for, load_policy
        from zprl.rollout import LeRobotRolloutPolicy

        if options.device is None:
            options = replace(options, device="cuda" if torch.cuda.is_available() else "cpu")
        policy, pre, post = load_policy(options.policy, device=options.device)
    worker_note = " in worker processes, each importing the simulator" if options.num_envs > 1 else ""
    with phase(f"Starting {options.num_envs} {get_task(options.task).name} env(s){worker_note}"):
        envs = make_vector_env(options.task, options.num_envs, render_mode="rgb_array" if options.video_dir else None,
                               **env_kwargs_for(policy.config))
    try:
        check_policy_matches_env(policy.config, envs.single_observation_space, envs.single_action_space)
        result = Evaluator(envs, options.episodes, seed=options.seed, video_dir=options.video_dir).evaluate(
            LeRobotRolloutPolicy(policy, pre, post, options.device))
    finally:
        envs.close()
    metrics = result.as_metrics(prefix="")
    out_path = results_path(options.policy, options.task, options.seed)
    report = {"policy": str(Path(options.policy).resolve()), "task": options.task, "seed": options.seed,
              "metrics": metrics, "successes": result.successes, "returns": result.returns,
              "lengths": result.lengths, "video_paths": result.video_paths}
    out_path.write_text(json.dumps(report, indent=2))
    if options.mlflow:
        with phase(f"Logging the run to MLflow (experiment {options.experiment})"):
            report["mlflow_run_id"] = _log_to_mlflow(options, metrics, out_path, result.video_paths)
    return {**report, "results_path": str(out_path)}


def _log_to_mlflow(options: EvaluateOptions, metrics: dict[str, float], json_path: Path,
                   video_paths: list[str]) -> str:
    import mlflow

    from zprl.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(options.experiment)
    policy_name = Path(options.policy).resolve()
    run_name = f"{options.task}_{policy_name.parent.name if policy_name.name == 'policy' else policy_name.stem}"
    with mlflow.start_run(run_name=run_name) as run:
        params = {k: v for k, v in asdict(options).items() if k not in ("mlflow", "experiment")}
        mlflow.log_params({**params, "policy": str(policy_name)})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(json_path))
        for path in video_paths:
            mlflow.log_artifact(path, artifact_path="videos")
    return run.info.run_id


def print_evaluate_summary(report: dict, options: EvaluateOptions) -> None:
    """The metrics as JSON, then where they were written and what to run next."""
    from zprl.tracking import tracking_uri

    print(json.dumps(report["metrics"], indent=2))
    print(f"\nResults written to {report['results_path']}")
    if "mlflow_run_id" in report:
        print(f"MLflow: experiment {options.experiment}, run {report['mlflow_run_id']} ({tracking_uri()}); "
              f"browse with `mlflow ui --backend-store-uri {tracking_uri()}`")
    if report["video_paths"]:
        print(f"Videos: {os.path.dirname(report['video_paths'][0])}")
    print(f"Next: steer it online with `uv run lightning fit -c conf/zprl_online.yaml "
          f"--model.init_args.policy_path={options.policy} --model.init_args.task={options.task}`")
