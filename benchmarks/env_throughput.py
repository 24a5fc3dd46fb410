"""Env steps/s: raw simulator vs zprl's Gymnasium wrapper vs zprl's vector envs (random actions, no rendering).

The raw simulator is robosuite (``lift``, ``can``) or the bare MetaWorld env class (``box_close``, ``push_wall``;
goal-observable, placements drawn from its own generator, as zprl configures it). Every configuration runs
``--steps`` env steps in total (summed over workers), after a short warm-up, with episodes reset at the task's
horizon; with ``--repeats`` the best of several runs is kept (the machine is shared, so the best run is the least
disturbed one); ``--clock process`` times the single-process configurations in CPU time, which a busy machine
disturbs far less. Usage:

    uv run python benchmarks/env_throughput.py --task lift --steps 2000
    uv run python benchmarks/env_throughput.py --task box_close --steps 2000 --repeats 9 --clock process
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from zprl.envs import TASKS, make_env, make_vector_env

WARMUP_STEPS = 20


def raw_robosuite(task: str, steps: int, rng: np.random.Generator, clock=time.perf_counter) -> float:
    """robosuite.make with zprl's default controller and settings; returns steps/s."""
    # Imported here so that the other tasks' benchmarks run where robosuite is not installed.
    import robosuite

    from zprl.envs.robomimic_env import default_env_meta  # also registers zprl's mujoco_py stand-in

    env = robosuite.make(TASKS[task].sim_name, **default_env_meta(task)["env_kwargs"])
    low, high = env.action_spec
    horizon = TASKS[task].max_episode_steps
    return _random_steps_per_s(env, low, high, horizon, steps, rng, clock)


def _random_steps_per_s(env, low, high, horizon: int, steps: int, rng: np.random.Generator, clock) -> float:
    """Steps/s of ``env`` under uniform random actions, reset every ``horizon`` steps, after a warm-up."""
    env.reset()
    for _ in range(WARMUP_STEPS):
        env.step(rng.uniform(low, high))
    env.reset()
    start = clock()
    for t in range(1, steps + 1):
        env.step(rng.uniform(low, high))
        if t % horizon == 0:
            env.reset()
    elapsed = clock() - start
    env.close()
    return steps / elapsed


def raw_metaworld(task: str, steps: int, rng: np.random.Generator, clock=time.perf_counter) -> float:
    """The bare MetaWorld env class, configured as zprl's wrapper configures it; returns steps/s."""
    from zprl.envs.metaworld_env import MetaWorldEnv

    env = MetaWorldEnv(task).sim_env  # the MetaWorld object itself, without zprl's wrapper around it
    low, high = env.action_space.low, env.action_space.high
    horizon = TASKS[task].max_episode_steps
    return _random_steps_per_s(env, low, high, horizon, steps, rng, clock)


RAW_SIMULATORS = {"robomimic": ("raw robosuite", raw_robosuite), "metaworld": ("raw MetaWorld", raw_metaworld)}


def zprl_single(task: str, steps: int, rng: np.random.Generator, clock=time.perf_counter) -> float:
    """One zprl env (the task's Gymnasium wrapper in a TimeLimit), reset when the episode ends; returns steps/s."""
    env = make_env(task)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=0)
    for _ in range(WARMUP_STEPS):
        env.step(rng.uniform(low, high))
    env.reset(seed=0)
    start = clock()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high))
        if terminated or truncated:
            env.reset()
    elapsed = clock() - start
    env.close()
    return steps / elapsed


def zprl_vector(task: str, steps: int, rng: np.random.Generator, num_envs: int, asynchronous: bool,
                clock=time.perf_counter) -> float:
    """zprl's vector env (auto-reset) with ``num_envs`` copies; returns total env steps/s."""
    envs = make_vector_env(task, num_envs=num_envs, asynchronous=asynchronous)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    envs.reset(seed=0)
    for _ in range(WARMUP_STEPS):
        envs.step(rng.uniform(low, high, size=(num_envs, low.shape[0])))
    vector_steps = max(1, steps // num_envs)
    start = clock()
    for _ in range(vector_steps):
        envs.step(rng.uniform(low, high, size=(num_envs, low.shape[0])))
    elapsed = clock() - start
    envs.close()
    return vector_steps * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[n for n, spec in TASKS.items() if spec.suite in RAW_SIMULATORS],
                        default="lift")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per configuration (all workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="AsyncVectorEnv sizes")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is reported")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU time of this process, steadier on a busy machine "
                             "(no subprocess vector envs)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    raw_name, raw_run = RAW_SIMULATORS[TASKS[args.task].suite]
    configs = [(raw_name, partial(raw_run, clock=clock)), ("zprl env (single)", partial(zprl_single, clock=clock)),
               ("zprl SyncVectorEnv x1", partial(zprl_vector, num_envs=1, asynchronous=False, clock=clock))]
    if args.clock == "wall":  # the workers' CPU time is not this process's
        configs += [(f"zprl AsyncVectorEnv x{n}", partial(zprl_vector, num_envs=n, asynchronous=True))
                    for n in args.workers]
    rates: dict[str, list[float]] = {name: [] for name, _ in configs}
    for _ in range(args.repeats):  # interleaved, so that load changes on a shared machine hit every configuration
        for name, run in configs:
            rates[name].append(run(args.task, args.steps, rng))
    rows = [(name, max(values)) for name, values in rates.items()]

    raw = rows[0][1]
    print(f"\n{args.task}: {args.steps} env steps per configuration, best of {args.repeats}, random actions, "
          f"no rendering, {args.clock} clock\n")
    print(f"| configuration | env steps/s | vs {raw_name} |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / raw:.2f}x |")
    # back-to-back runs of one repeat see the same load: the median of their ratios is the steadiest estimate
    paired = np.median(np.divide(rates["zprl env (single)"], rates[raw_name]))
    print(f"\nzprl env / {raw_name}: {paired:.3f} (median over {args.repeats} back-to-back pairs), "
          f"{rows[1][1] / raw:.3f} (best vs best)")


if __name__ == "__main__":
    main()
