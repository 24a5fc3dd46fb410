"""Console entry points: ``lightning`` (LightningCLI over zprl modules) and ``zprl`` (data, evaluate, compare)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zprl.logging_setup import configure_logging


def lightning_main(args: list[str] | None = None) -> None:
    """``lightning fit -c conf/pretrain.yaml`` / ``-c conf/zprl_online.yaml`` (``--verbose``: all logs)."""
    argv = sys.argv[1:] if args is None else args
    configure_logging(verbose="--verbose" in argv)
    from zprl.lightning_cli import run_lightning_cli  # imports Lightning after the log filters are in place

    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv[1:] = [a for a in sys.argv[1:] if a != "--verbose"]
        run_lightning_cli(None)
    else:
        run_lightning_cli([a for a in args if a != "--verbose"])


def _data_generate(ns: argparse.Namespace) -> None:
    from zprl.data.generate import demo_source, generate_dataset

    options = {} if ns.bias is None else {"bias": tuple(ns.bias)}
    report = generate_dataset(ns.task, ns.demos, ns.out, seed=ns.seed, camera_names=tuple(ns.cameras),
                              camera_size=ns.camera_size, overwrite=ns.overwrite, **options)
    print(json.dumps(report, indent=2, default=str))
    print(f"\n{demo_source(ns.task).summary(report)}")


def _evaluate(ns: argparse.Namespace) -> None:
    from zprl.evaluate_command import EvaluateOptions, print_evaluate_summary, run_evaluate

    options = EvaluateOptions(policy=ns.policy, task=ns.task, episodes=ns.episodes, num_envs=ns.num_envs,
                              seed=ns.seed, device=ns.device, video_dir=ns.video_dir, experiment=ns.experiment,
                              mlflow=not ns.no_mlflow)
    print_evaluate_summary(run_evaluate(options), options)


def _compare(ns: argparse.Namespace) -> None:
    from zprl.online.compare import run_comparison

    run_comparison(ns.methods, base=ns.base, seeds=ns.seeds, task=ns.task, experiment=ns.experiment,
                   overrides=ns.override, output_dir=ns.output_dir, jobs=ns.jobs)


def robomimic_script(name: str) -> Path:
    """A robomimic script by file name (``playback_dataset.py``, with or without ``.py``) or by path."""
    import robomimic

    scripts = Path(robomimic.__file__).parent / "scripts"
    path = Path(name)
    if not path.exists():
        path = scripts / (name if name.endswith(".py") else f"{name}.py")
    if not path.exists():
        available = sorted(p.name for p in scripts.glob("*.py") if not p.name.startswith("_"))
        raise FileNotFoundError(f"No robomimic script {name!r}; robomimic 0.3.0 ships {available}.")
    return path


def _robomimic(ns: argparse.Namespace) -> None:
    """Run one of robomimic's own scripts with the ``mujoco_py`` stand-in registered (see zprl.compat)."""
    import runpy

    import zprl.compat  # noqa: F401  (robomimic's env code imports mujoco_py)

    path = robomimic_script(ns.script)
    argv = sys.argv
    sys.argv = [str(path), *ns.script_args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv


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
    from zprl.evaluation import EVAL_SEED_OFFSET

    parser = argparse.ArgumentParser(prog="zprl", description=__doc__)
    parser.add_argument("--verbose", action="store_true",
                        help="show every log message and warning (same as ZPRL_LOG_LEVEL=DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="demonstration data").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="scripted mixed-quality demos -> robomimic HDF5 + LeRobot dataset")
    gen.add_argument("--task", default="lift",
                     help="lift | can | square | box_close | push_wall | reach (a biased PointReach operator)")
    gen.add_argument("--demos", type=int_at_least(1), default=100)
    gen.add_argument("--out", default="data/lift_mh")
    gen.add_argument("--seed", type=int_at_least(0), default=0)
    gen.add_argument("--cameras", nargs="*", default=[], help="e.g. agentview robot0_eye_in_hand")
    gen.add_argument("--camera-size", type=int_at_least(1), default=84)
    gen.add_argument("--overwrite", action="store_true",
                     help="replace a dataset this command wrote earlier (folders holding other files are refused)")
    gen.add_argument("--bias", type=float, nargs=2, default=None, metavar=("X", "Y"),
                     help="reach only: the operator's aiming offset (default 0.1 0.0)")
    gen.set_defaults(func=_data_generate)

    ev = sub.add_parser("evaluate", help="roll out a pretrained policy (LeRobot folder or .ckpt)",
                        epilog="Writes <policy>/eval_<task>_<seed>.json and logs an MLflow run (experiment "
                               "zprl-evaluate).")
    ev.add_argument("--policy", required=True)
    ev.add_argument("--task", default="lift")
    ev.add_argument("--episodes", type=int_at_least(1), default=50)
    ev.add_argument("--num-envs", type=int_at_least(1), default=min(4, os.cpu_count() or 1),
                    help="envs in parallel worker processes (default: min(4, CPU cores))")
    ev.add_argument("--seed", type=int_at_least(0), default=EVAL_SEED_OFFSET)
    ev.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ev.add_argument("--video-dir", default=None, help="write videos here (and log them to MLflow)")
    ev.add_argument("--experiment", default="zprl-evaluate", help="MLflow experiment")
    ev.add_argument("--no-mlflow", action="store_true", help="only print and write the JSON results")
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="methods x seeds online RL comparison tracked in MLflow",
                         epilog="LightningCLI overrides for every run go after `--`, e.g. "
                                "`zprl compare conf/methods/*.yaml -- --model.init_args.total_env_steps=20000`.")
    cmp.add_argument("methods", nargs="+",
                     help="method overlays, e.g. conf/methods/zprl.yaml conf/methods/action_residual.yaml")
    cmp.add_argument("--base", nargs="+", default=["conf/zprl_online.yaml"],
                     help="online config(s) the method overlays apply to, in order (e.g. a task overlay last)")
    cmp.add_argument("--task", default=None, help="override the configs' task")
    cmp.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1, 2])
    cmp.add_argument("--experiment", default="zprl-compare")
    cmp.add_argument("--output-dir", default="outputs/compare", help="run folders (checkpoints) go here")
    cmp.add_argument("--jobs", type=int_at_least(1), default=1, help="runs at once (separate processes)")
    cmp.set_defaults(func=_compare)

    rm = sub.add_parser("robomimic", help="run one of robomimic's scripts (e.g. playback_dataset.py) with the "
                                          "mujoco_py stand-in that robomimic 0.3.0 needs on modern MuJoCo",
                        epilog="e.g. `zprl robomimic playback_dataset.py --dataset data/lift_mh/demo.hdf5 --n 1`; "
                               "`zprl robomimic get_dataset_info.py --help` shows a script's own options.")
    rm.add_argument("script", help="a script of robomimic/scripts (playback_dataset.py, get_dataset_info.py, ...)")
    rm.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's own arguments")
    rm.set_defaults(func=_robomimic)
    return parser


def zprl_main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # LightningCLI overrides for `compare`
    ns = build_parser().parse_args(argv[:split])
    ns.override = argv[split + 1:]
    configure_logging(verbose=ns.verbose)
    ns.func(ns)


if __name__ == "__main__":
    zprl_main(sys.argv[1:])
