"""Env steps/s: raw robosuite vs zprl's Gymnasium wrapper vs zprl's vector envs (random actions, no rendering).

Every configuration runs ``--steps`` env steps in total (summed over workers), after a short warm-up, with
episodes reset at the task's horizon; with ``--repeats`` the best of several runs is kept (the machine is shared,
so the best run is the least disturbed one). Usage:

    uv run python benchmarks/env_throughput.py --task lift --steps 2000
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from zprl.envs import TASKS, make_env, make_vector_env

WARMUP_STEPS = 20


def raw_robosuite(task: str, steps: int, rng: np.random.Generator) -> float:
    """robosuite.make with zprl's default controller and settings; returns steps/s."""
    # Imported here so that the other tasks' benchmarks run where robosuite is not installed.
    import robosuite

    from zprl.envs.robomimic_env import default_env_meta  # also registers zprl's mujoco_py stand-in

    env = robosuite.make(TASKS[task].sim_name, **default_env_meta(task)["env_kwargs"])
    low, high = env.action_spec
    horizon = TASKS[task].max_episode_steps
    env.reset()
    for _ in range(WARMUP_STEPS):
        env.step(rng.uniform(low, high))
    env.reset()
    start = time.perf_counter()
    for t in range(1, steps + 1):
        env.step(rng.uniform(low, high))
        if t % horizon == 0:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def zprl_single(task: str, steps: int, rng: np.random.Generator) -> float:
    """One zprl env (RobomimicEnv in a TimeLimit), reset when the episode ends; returns steps/s."""
    env = make_env(task)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=0)
    for _ in range(WARMUP_STEPS):
        env.step(rng.uniform(low, high))
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def zprl_vector(task: str, steps: int, rng: np.random.Generator, num_envs: int, asynchronous: bool) -> float:
    """zprl's vector env (auto-reset) with ``num_envs`` copies; returns total env steps/s."""
    envs = make_vector_env(task, num_envs=num_envs, asynchronous=asynchronous)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    envs.reset(seed=0)
    for _ in range(WARMUP_STEPS):
        envs.step(rng.uniform(low, high, size=(num_envs, low.shape[0])))
    vector_steps = max(1, steps // num_envs)
    start = time.perf_counter()
    for _ in range(vector_steps):
        envs.step(rng.uniform(low, high, size=(num_envs, low.shape[0])))
    elapsed = time.perf_counter() - start
    envs.close()
    return vector_steps * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["lift", "can"], default="lift")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per configuration (all workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="AsyncVectorEnv sizes")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is reported")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    configs = [("raw robosuite", raw_robosuite), ("zprl env (single)", zprl_single),
               ("zprl SyncVectorEnv x1", partial(zprl_vector, num_envs=1, asynchronous=False))]
    configs += [(f"zprl AsyncVectorEnv x{n}", partial(zprl_vector, num_envs=n, asynchronous=True))
                for n in args.workers]
    rows = [(name, max(run(args.task, args.steps, rng) for _ in range(args.repeats))) for name, run in configs]

    raw = rows[0][1]
    print(f"\n{args.task}: {args.steps} env steps per configuration, best of {args.repeats}, random actions, "
          "no rendering\n")
    print("| configuration | env steps/s | vs raw robosuite |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / raw:.2f}x |")


if __name__ == "__main__":
    main()
