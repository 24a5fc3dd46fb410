"""Console entry points: ``lightning`` (LightningCLI over zprl modules) and ``zprl`` (data, evaluate, compare)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from zprl.checkpointing import resolve_resume_checkpoint
from zprl.tracking import MLflowSaveConfigCallback, flatten_config, prepare_tracking

# Model settings that may differ between a checkpoint and the resumed run: the budget and evaluation schedule.
RESUMABLE_CHANGES = frozenset({"total_env_steps", "eval_every_env_steps", "eval_episodes", "eval_num_envs"})
LIGHTNING_CKPT_ALIASES = frozenset({"last", "best", "hpc", "registry"})


def _plain(value: Any) -> Any:
    """Config values in one comparable form (tuples as lists, Namespaces as dicts)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def resume_conflicts(checkpoint_hparams: dict, class_path: str, init_args: dict) -> list[str]:
    """Model settings of the command line that differ from the checkpoint's, except :data:`RESUMABLE_CHANGES`."""
    hparams = {key: value for key, value in checkpoint_hparams.items() if key != "_instantiator"}
    saved_class = hparams.pop("_class_path", None)
    conflicts = []
    if saved_class and saved_class != class_path:
        conflicts.append(f"model class: checkpoint {saved_class}, command line {class_path}")
    saved, given = flatten_config(_plain(hparams)), flatten_config(_plain(init_args))
    for key in sorted(saved.keys() & given.keys()):
        if key.split(".")[0] not in RESUMABLE_CHANGES and saved[key] != given[key]:
            conflicts.append(f"{key}: checkpoint {saved[key]!r}, command line {given[key]!r}")
    return conflicts


class ZPRLLightningCLI(LightningCLI):
    """LightningCLI in subclass mode with ``omegaconf+`` parsing: ``${...}`` interpolation is resolved on the
    merged config (all ``-c`` files and command-line overrides), so overlays and overrides propagate.

    ``--ckpt_path`` differs from Lightning's: an unreadable checkpoint falls back to the previous one kept
    beside it (``zprl.checkpointing``), and instead of silently replacing the command line's model settings
    with the checkpoint's, the run keeps the command line's budget / evaluation schedule and refuses any
    other difference (architecture, steering, method) with an error listing them.
    """

    def before_instantiate_classes(self) -> None:
        """Ready every MLflow logger's store (created once under a lock) or server (probed) before the run."""
        loggers = self.config[self.config.subcommand].trainer.get("logger")
        for logger_config in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger_config, Namespace) and logger_config.get("class_path", "").endswith("MLFlowLogger"):
                # MLFlowLogger's own default: MLFLOW_TRACKING_URI, else a file store MLflow handles itself
                uri = logger_config.init_args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                if uri:
                    prepare_tracking(uri)

    # Overrides LightningCLI's private hook (called while parsing, before anything is instantiated), which
    # torch.loads the checkpoint and overwrites the parsed model settings with its hyper-parameters.
    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_ALIASES:
            return
        resolved = resolve_resume_checkpoint(ckpt_path)
        self.config[subcommand].ckpt_path = str(resolved)
        hparams = torch.load(resolved, weights_only=True, map_location="cpu").get("hyper_parameters") or {}
        model = self.config[subcommand].model
        conflicts = resume_conflicts(hparams, model.class_path, model.init_args)
        if conflicts:
            raise SystemExit(
                f"error: the command line's model settings differ from those of the checkpoint {resolved}:\n  "
                + "\n  ".join(conflicts)
                + f"\nResuming continues the checkpointed run; only {sorted(RESUMABLE_CHANGES)} and trainer settings "
                "may change. Use the checkpointed run's settings (its config.yaml), or start a new run without "
                "--ckpt_path (and another trainer.default_root_dir).")


def lightning_main(args: list[str] | None = None) -> None:
    """``lightning fit -c conf/pretrain.yaml`` / ``lightning fit -c conf/zprl_online.yaml``."""
    torch.set_float32_matmul_precision("high")
    # Interpolations like ${model.init_args.task} are written relative to the subcommand's config.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    ZPRLLightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MLflowSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf+"},
        args=args,
        auto_configure_optimizers=False,
    )


def _data_generate(ns: argparse.Namespace) -> None:
    from zprl.data.generate import generate_dataset

    if ns.task == "reach":
        from zprl.data.reach_demos import generate_reach_dataset

        root = generate_reach_dataset(ns.demos, ns.out, bias=tuple(ns.bias), seed=ns.seed, overwrite=ns.overwrite)
        print(f"Wrote {ns.demos} biased PointReach demos (LeRobot format) to {root}")
        return
    report = generate_dataset(ns.task, ns.demos, ns.out, seed=ns.seed, camera_names=tuple(ns.cameras),
                              camera_size=ns.camera_size, overwrite=ns.overwrite)
    print(json.dumps(report, indent=2, default=str))


def _evaluate(ns: argparse.Namespace) -> None:
    from zprl.envs import make_vector_env
    from zprl.evaluation import Evaluator
    from zprl.policy_io import check_policy_matches_env, load_policy, policy_cameras
    from zprl.rollout import LeRobotRolloutPolicy

    policy, pre, post = load_policy(ns.policy, device=ns.device)
    cameras, size = policy_cameras(policy.config)
    envs = make_vector_env(ns.task, ns.num_envs, camera_names=cameras, camera_size=size,
                           render_mode="rgb_array" if ns.video_dir else None)
    try:
        check_policy_matches_env(policy.config, envs.single_observation_space, envs.single_action_space)
        result = Evaluator(envs, ns.episodes, seed=ns.seed, video_dir=ns.video_dir).evaluate(
            LeRobotRolloutPolicy(policy, pre, post, ns.device))
    finally:
        envs.close()
    print(json.dumps(result.as_metrics(prefix=""), indent=2))


def _compare(ns: argparse.Namespace) -> None:
    from zprl.online.compare import run_comparison

    run_comparison(ns.methods, base=ns.base, seeds=ns.seeds, task=ns.task, experiment=ns.experiment,
                   overrides=ns.override, output_dir=ns.output_dir, jobs=ns.jobs)


def int_at_least(low: int):
    """argparse type: a whole number >= ``low`` (counts of demos, episodes, envs, jobs and pixels; seeds)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zprl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="demonstration data").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="scripted mixed-quality demos -> robomimic HDF5 + LeRobot dataset")
    gen.add_argument("--task", default="lift", help="lift | can | square | reach (a biased PointReach operator)")
    gen.add_argument("--demos", type=int_at_least(1), default=100)
    gen.add_argument("--out", default="data/lift_mh")
    gen.add_argument("--seed", type=int_at_least(0), default=0)
    gen.add_argument("--cameras", nargs="*", default=[], help="e.g. agentview robot0_eye_in_hand")
    gen.add_argument("--camera-size", type=int_at_least(1), default=84)
    gen.add_argument("--overwrite", action="store_true",
                     help="replace a dataset this command wrote earlier (folders holding other files are refused)")
    gen.add_argument("--bias", type=float, nargs=2, default=[0.1, 0.0], help="reach only: the operator's aiming offset")
    gen.set_defaults(func=_data_generate)

    ev = sub.add_parser("evaluate", help="roll out a pretrained policy (LeRobot folder or .ckpt)")
    ev.add_argument("--policy", required=True)
    ev.add_argument("--task", default="lift")
    ev.add_argument("--episodes", type=int_at_least(1), default=50)
    ev.add_argument("--num-envs", type=int_at_least(1), default=4)
    ev.add_argument("--seed", type=int_at_least(0), default=100_000)
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--video-dir", default=None)
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="methods x seeds online RL comparison tracked in MLflow",
                         epilog="LightningCLI overrides for every run go after `--`, e.g. "
                                "`zprl compare conf/methods/*.yaml -- --model.init_args.total_env_steps=20000`.")
    cmp.add_argument("methods", nargs="+", help="method overlays, e.g. conf/methods/zprl.yaml conf/methods/action_residual.yaml")
    cmp.add_argument("--base", nargs="+", default=["conf/zprl_online.yaml"],
                     help="online config(s) the method overlays apply to, in order (e.g. a task overlay last)")
    cmp.add_argument("--task", default=None, help="override the configs' task")
    cmp.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1, 2])
    cmp.add_argument("--experiment", default="zprl-compare")
    cmp.add_argument("--output-dir", default="outputs/compare", help="run folders (checkpoints) go here")
    cmp.add_argument("--jobs", type=int_at_least(1), default=1, help="runs at once (separate processes)")
    cmp.set_defaults(func=_compare)
    return parser


def zprl_main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # LightningCLI overrides for `compare`
    ns = build_parser().parse_args(argv[:split])
    ns.override = argv[split + 1:]
    ns.func(ns)


if __name__ == "__main__":
    zprl_main(sys.argv[1:])
