"""Quality of offline pretraining: success of a VIB policy trained on mixed-quality demos.

Pretrains with ``lightning fit -c conf/pretrain.yaml -c benchmarks/pretrain_quality.yaml`` (then any
``--config`` task overlays) on a generated dataset, then evaluates the exported policy on ``--episodes``
fresh seeds, once per ``--conditioning``: "latent" (decode(mu), the policy ZPRL steers) and "raw" (the
embedding e: with the decoupled VIB this is the same network without its bottleneck). It prints the success
rates, the latent path's ratio to the 0.60 bar and its difference to the raw path (the VIB's cost in base
success; the faithful-recipe target is >= -0.05). Other arguments go to LightningCLI. Examples:

    OMP_NUM_THREADS=1 uv run python benchmarks/pretrain_quality.py --task lift --data data/lift_mh \
        --data.init_args.filter_key=expert+noisy --trainer.max_steps=8000
    OMP_NUM_THREADS=1 uv run python benchmarks/pretrain_quality.py --task box_close --data data/box_close_mh \
        --config conf/tasks/box_close_pretrain.yaml \
        --model.init_args.policy.flow_num_steps=5
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from zprl.envs import make_vector_env
from zprl.evaluation import EVAL_SEED_OFFSET, Evaluator
from zprl.policy_io import env_kwargs_for, load_policy
from zprl.rollout import LeRobotRolloutPolicy

QUALITY_BAR = 0.60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--data", default="data/lift_mh")
    parser.add_argument("--out", default=None, help="run folder (default outputs/bench/pretrain_<task>)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--config", action="append", default=[],
                        help="task overlay applied after the benchmark overlay (conf/tasks/<task>_pretrain.yaml); "
                             "repeatable")
    parser.add_argument("--skip-training", action="store_true", help="evaluate an existing <out>/policy")
    parser.add_argument("--report", default="quality.json", help="file in <out> the summary is written to")
    parser.add_argument("--conditioning", nargs="+", default=["latent", "raw"], choices=["latent", "raw"],
                        help="generator conditionings to evaluate (raw needs vib_training decoupled/posthoc)")
    args, lightning_overrides = parser.parse_known_args()  # anything else goes to LightningCLI
    out = Path(args.out or f"outputs/bench/pretrain_{args.task}")

    start = time.time()
    if not args.skip_training:
        command = [sys.executable, "-c", "from zprl.cli import lightning_main; lightning_main()",
                   "fit", "-c", "conf/pretrain.yaml", "-c", "benchmarks/pretrain_quality.yaml",
                   *[arg for config in args.config for arg in ("-c", config)],
                   f"--data.init_args.hdf5_path={args.data}/demo.hdf5", f"--data.init_args.task={args.task}",
                   f"--trainer.default_root_dir={out}",
                   f"--trainer.logger.init_args.run_name=bench_{args.task}", *lightning_overrides]
        subprocess.run(command, check=True)
    train_seconds = time.time() - start

    policy, pre, post = load_policy(out / "policy", device="cuda" if torch.cuda.is_available() else "cpu")
    summary = {"task": args.task, "episodes": args.episodes, "bar": QUALITY_BAR, "train_seconds": round(train_seconds),
               "vib_training": policy.config.vib_training, "head": policy.config.head}
    for conditioning in args.conditioning:
        policy.config.inference_conditioning = conditioning
        eval_start = time.time()
        envs = make_vector_env(args.task, args.num_envs, **env_kwargs_for(policy.config))
        try:
            result = Evaluator(envs, args.episodes, seed=EVAL_SEED_OFFSET).evaluate(
                LeRobotRolloutPolicy(policy, pre, post, policy.config.device))
        finally:
            envs.close()
        summary[conditioning] = {"success_rate": result.success_rate, "mean_length": result.mean_length,
                                 "jerk": result.jerk, "eval_seconds": round(time.time() - eval_start)}
    if "latent" in summary:
        summary["latent_ratio_to_bar"] = summary["latent"]["success_rate"] / QUALITY_BAR
    if "latent" in summary and "raw" in summary:
        latent, raw = summary["latent"]["success_rate"], summary["raw"]["success_rate"]
        # 95 % normal interval of the difference, as if the two evaluations were independent (they share seeds,
        # so this is conservative)
        half_width = 1.96 * math.sqrt((latent * (1 - latent) + raw * (1 - raw)) / args.episodes)
        summary["latent_minus_raw"] = latent - raw
        summary["latent_minus_raw_ci95"] = [latent - raw - half_width, latent - raw + half_width]
    (out / args.report).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
