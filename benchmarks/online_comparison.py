"""Online RL comparison: ZPRL vs action residual vs noise steering vs the frozen base policy, methods x seeds.

Runs ``zprl compare`` (every run a child of one MLflow parent run, equal env-step budget per method) and
prints the summary table plus each method's final success as a ratio to the frozen base policy's and to
the action-residual baseline's (the reference). Anything after ``--`` goes to every run's LightningCLI.

    uv run python benchmarks/online_comparison.py --base conf/zprl_online.yaml conf/tasks/reach_online.yaml --task reach
    uv run python benchmarks/online_comparison.py --task lift -- \\
        --model.init_args.policy_path=outputs/bench/pretrain_lift/policy --model.init_args.total_env_steps=20000
"""

from __future__ import annotations

import argparse
import sys

from zprl.online.compare import run_comparison

METHODS = ["conf/methods/zprl.yaml", "conf/methods/action_residual.yaml", "conf/methods/noise_steering.yaml",
           "conf/methods/base_policy.yaml"]
REFERENCES = ("base_policy", "action_residual")


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--base", nargs="+", default=["conf/zprl_online.yaml"])
    parser.add_argument("--task", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiment", default="zprl-benchmark")
    parser.add_argument("--output-dir", default="outputs/bench/online")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    args = parser.parse_args(argv[:split])

    table = run_comparison(args.methods, base=args.base, seeds=args.seeds, task=args.task,
                           experiment=args.experiment, overrides=argv[split + 1:], output_dir=args.output_dir,
                           jobs=args.jobs)
    final = dict(zip(table["method"], table["final_success_mean"], strict=False))
    print()
    for reference in REFERENCES:
        if reference not in final:
            continue
        for method, success in final.items():
            if method != reference:
                ratio = success / final[reference] if final[reference] > 0 else float("inf")
                print(f"{method} / {reference} final success: {success:.3f} / {final[reference]:.3f} = {ratio:.2f}x")


if __name__ == "__main__":
    main()
