"""Online RL loop speed: env steps/s of OnlineRLModule (steered collection + SAC updates) vs the raw simulator.

The loop is timed over training iterations after warm-up (so every iteration collects AND updates at the
configured update-to-data ratio), excluding the iterations that ran an evaluation. The reference is the raw
simulator stepped with random actions in one process (robosuite.make for Lift/Can, the bare Gymnasium env
otherwise), as in benchmarks/env_throughput.py. Usage:

    OMP_NUM_THREADS=1 uv run python benchmarks/online_throughput.py --task lift \\
        --policy outputs/bench/pretrain_lift/policy --num-envs 2 --steps 1000

It also prints the split of the timed iterations into simulator, policy (frozen policy, steering, actor),
SAC updates, replay buffer and logging (the module's ``time/*`` metrics).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parent))
from env_throughput import raw_robosuite, zprl_single  # noqa: E402  (sibling benchmark script)

from zprl.envs import TASKS  # noqa: E402
from zprl.online.module import OnlineRLModule  # noqa: E402


class LoopTimer(Callback):
    """Wall time and env steps of the training iterations after warm-up that ran no evaluation."""

    def __init__(self, warmup_transitions: int):
        self.warmup_transitions = warmup_transitions
        self.seconds = 0.0
        self.env_steps = 0
        self.phases: dict[str, float] = {}  # seconds per phase (the module's time/* split) over timed iterations
        self.buffer_bytes = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = (time.perf_counter(), module.env_steps, module.transitions, module.last_eval_at)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        start_time, start_steps, start_transitions, start_eval = self._start
        if start_transitions >= self.warmup_transitions and module.last_eval_at == start_eval:
            self.seconds += time.perf_counter() - start_time
            self.env_steps += module.env_steps - start_steps
            self.buffer_bytes = module.buffer.bytes_per_transition if module.buffer is not None else 0
            for phase, seconds in module.last_timings.items():
                self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @property
    def rate(self) -> float:
        if self.env_steps == 0:
            raise RuntimeError("No timed iteration: raise --steps above --env-steps-per-iter.")
        return self.env_steps / self.seconds


def online_loop(args: argparse.Namespace) -> LoopTimer:
    module = OnlineRLModule(
        policy_path=args.policy, task=args.task, steering=args.steering,
        num_envs=args.num_envs, asynchronous=args.asynchronous, total_env_steps=args.warmup + args.steps,
        env_steps_per_iter=args.env_steps_per_iter, utd_ratio=args.utd, warmup_transitions=args.warmup // 4,
        buffer_capacity=max(10_000, args.warmup + args.steps), eval_every_env_steps=10**9,
        eval_episodes=args.num_envs, seed=0)
    timer = LoopTimer(args.warmup // 4)
    L.Trainer(max_steps=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[timer]).fit(module)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lift", choices=sorted(TASKS))
    parser.add_argument("--policy", required=True, help="LeRobot-format policy folder or pretraining .ckpt")
    parser.add_argument("--steering", default="latent", choices=["latent", "action", "noise"],
                        help="the learner to time (a frozen base, steering none, runs no loop: one evaluation)")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--asynchronous", action="store_true", help="subprocess vector env")
    parser.add_argument("--steps", type=int, default=1000, help="timed env steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=256,
                        help="env steps before SAC updates start (warm-up of warmup/4 chunk transitions)")
    parser.add_argument("--env-steps-per-iter", type=int, default=64)
    parser.add_argument("--utd", type=float, default=1.0, help="SAC updates per collected chunk")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    reference = raw_robosuite if TASKS[args.task].suite == "robomimic" else zprl_single
    raw = reference(args.task, args.steps, rng)
    timer = online_loop(args)
    loop = timer.rate
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{args.task}, {args.steering} steering, {args.num_envs} envs, UTD {args.utd}, {device}\n")
    print("| configuration | env steps/s | vs raw simulator |")
    print("|---|---:|---:|")
    print(f"| raw simulator, random actions | {raw:,.0f} | 1.00x |")
    print(f"| online loop (collect + SAC updates) | {loop:,.0f} | {loop / raw:.3f}x |")
    buffer = timer.buffer_bytes
    if buffer:
        gib = buffer * 1e6 / 2**30
        print(f"\nreplay buffer: {buffer} bytes per chunk transition ({gib:.2f} GiB per 1M transitions)")
    print("\n| phase of the timed iterations | seconds | share |")
    print("|---|---:|---:|")
    for phase, seconds in sorted(timer.phases.items(), key=lambda item: -item[1]):
        print(f"| {phase.removeprefix('time/').removesuffix('_s')} | {seconds:.2f} | {seconds / timer.seconds:.1%} |")


if __name__ == "__main__":
    main()
