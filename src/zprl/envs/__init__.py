"""Simulators as Gymnasium (vector) environments with LeRobot observation keys."""

from __future__ import annotations

from functools import partial

import gymnasium as gym

from zprl.envs.tasks import TASKS, TaskSpec, get_task


def make_env(task: str = "lift", env_meta: dict | None = None, camera_names=(), camera_size: int = 84,
             render_mode: str | None = None, max_episode_steps: int | None = None) -> gym.Env:
    """Build one environment for ``task`` (or from a dataset's robomimic ``env_meta``), time-limited."""
    spec = get_task(env_meta["env_name"] if env_meta is not None else task)
    if spec.suite == "robomimic":
        from zprl.envs.robomimic_env import RobomimicEnv

        env = RobomimicEnv(spec.name, env_meta=env_meta, camera_names=tuple(camera_names),
                           camera_size=camera_size, render_mode=render_mode)
    elif spec.suite == "metaworld":
        from zprl.envs.metaworld_env import MetaWorldEnv

        env = MetaWorldEnv(spec.name, env_meta=env_meta, camera_names=tuple(camera_names),
                           camera_size=camera_size, render_mode=render_mode)
    elif spec.suite == "pusht":
        from zprl.envs.pusht_env import PushTEnv

        env = PushTEnv(render_mode=render_mode, camera_names=camera_names)
    elif spec.suite == "reach":
        from zprl.envs.reach import PointReachEnv

        env = PointReachEnv(render_mode=render_mode, camera_names=camera_names)
    else:
        raise ValueError(f"Task {spec.name!r} has suite {spec.suite!r}, which make_env cannot build; add a branch.")
    return gym.wrappers.TimeLimit(env, max_episode_steps or spec.max_episode_steps)


def make_vector_env(task: str = "lift", num_envs: int = 1, asynchronous: bool | None = None,
                    env_meta: dict | None = None, camera_names=(), camera_size: int = 84,
                    render_mode: str | None = None, max_episode_steps: int | None = None) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the task in a Gymnasium vector env (subprocesses when ``asynchronous``).

    ``asynchronous=None`` picks AsyncVectorEnv for more than one env. Episodes auto-reset in
    Gymnasium's next-step mode: the step after a terminal one returns the reset observation
    (:mod:`zprl.envs.vector` reads such an env for the rollouts).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    get_task(env_meta["env_name"] if env_meta is not None else task)  # fail fast, in this process
    factory = partial(make_env, task, env_meta, tuple(camera_names), camera_size, render_mode, max_episode_steps)
    if asynchronous is None:
        asynchronous = num_envs > 1
    if asynchronous:
        return gym.vector.AsyncVectorEnv([factory] * num_envs, context="spawn")
    return gym.vector.SyncVectorEnv([factory] * num_envs)


__all__ = ["TASKS", "TaskSpec", "get_task", "make_env", "make_vector_env"]
