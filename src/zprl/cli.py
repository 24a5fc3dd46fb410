"""Console entry points: ``lightning`` (LightningCLI over zprl modules) and ``zprl`` (data, evaluate, compare)."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from zprl.tracking import MLflowSaveConfigCallback


class ZPRLLightningCLI(LightningCLI):
    """LightningCLI in subclass mode with ``omegaconf+`` parsing: ``${...}`` interpolation is resolved on the
    merged config (all ``-c`` files and command-line overrides), so overlays and overrides propagate."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zprl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="demonstration data").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="scripted mixed-quality demos -> robomimic HDF5 + LeRobot dataset")
    gen.add_argument("--task", default="lift",
                     help="lift | can | square | box_close | push_wall | reach (a biased PointReach operator)")
    gen.add_argument("--demos", type=int, default=100)
    gen.add_argument("--out", default="data/lift_mh")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--cameras", nargs="*", default=[], help="e.g. agentview robot0_eye_in_hand")
    gen.add_argument("--camera-size", type=int, default=84)
    gen.add_argument("--overwrite", action="store_true")
    gen.add_argument("--bias", type=float, nargs=2, default=[0.1, 0.0], help="reach only: the operator's aiming offset")
    gen.set_defaults(func=_data_generate)

    ev = sub.add_parser("evaluate", help="roll out a pretrained policy (LeRobot folder or .ckpt)")
    ev.add_argument("--policy", required=True)
    ev.add_argument("--task", default="lift")
    ev.add_argument("--episodes", type=int, default=50)
    ev.add_argument("--num-envs", type=int, default=4)
    ev.add_argument("--seed", type=int, default=100_000)
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
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cmp.add_argument("--experiment", default="zprl-compare")
    cmp.add_argument("--output-dir", default="outputs/compare", help="run folders (checkpoints) go here")
    cmp.add_argument("--jobs", type=int, default=1, help="runs at once (separate processes)")
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
