"""Scripted PointReach demos with a systematic aiming bias: a base policy that online RL must correct.

The ``reach`` demo source (``zprl data generate --task reach [--bias X Y]``) writes one LeRobot dataset
straight at ``--out`` (repo_id ``zprl/reach_biased``, as ``conf/pretrain_reach.yaml`` reads it). All episodes
are kept, successful or not, so a policy imitating them inherits the bias and only succeeds when the goal
lies along the bias direction.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from zprl.data.generate import (
    DemoRequest,
    DemoSource,
    close_quietly,
    generate_dataset,
    record_episode,
    register_demo_source,
)
from zprl.data.lerobot_writer import LeRobotWriter, lerobot_features
from zprl.data.schema import OBS_ENV_STATE, OBS_STATE
from zprl.envs import make_env
from zprl.envs.reach import PointReachEnv, scripted_reach_action

REPO_ID = "zprl/reach_biased"
DEFAULT_BIAS = (0.1, 0.0)
LEROBOT_DATASET_NAMES = frozenset({"meta", "data", "videos", "images"})  # what a LeRobot v3 dataset root holds


class BiasedReachOperator:
    """The greedy PointReach expert aiming at ``goal + bias``; an ``expert``-tier operator without noise."""

    tier = "expert"

    def __init__(self, env: PointReachEnv, bias: tuple[float, float] = DEFAULT_BIAS):
        self.env = env
        self.bias = np.asarray(bias, np.float32)
        if self.bias.shape != (2,):
            raise ValueError(f"bias must be two numbers (the x, y offset of the aim point), got {bias!r}.")

    def reset(self, seed: int) -> None:
        """Nothing to draw: the operator is deterministic."""

    def act(self) -> np.ndarray:
        obs = {OBS_STATE: self.env.position, OBS_ENV_STATE: self.env.goal}
        return scripted_reach_action(obs, self.bias)


def write_reach_dataset(source: DemoSource, request: DemoRequest, staging: Path) -> dict:
    """Write ``request.num_demos`` episodes (reset seeds ``seed``, ``seed + 1``, ...) as a LeRobot dataset at
    ``staging``, which LeRobot creates; returns the report."""
    start = time.time()
    env = make_env(request.task, camera_names=request.camera_names)
    writer = None
    try:
        writer = LeRobotWriter(staging, REPO_ID, source.fps,
                               lerobot_features(env.observation_space, env.action_space.shape[0]), source.description)
        operator = source.make_operator(env.unwrapped, "expert", **request.options)
        successes = 0
        for index in range(request.num_demos):
            episode = source.rollout(env, operator, request.seed + index)
            writer.write_episode(episode)
            successes += episode.success
        writer.close()
    except BaseException:
        close_quietly(writer)
        raise
    finally:
        env.close()
    return {"task": request.task, "num_demos": request.num_demos, "seed": request.seed,
            "bias": list(request.options["bias"]), "success_rate": successes / request.num_demos,
            "lerobot_root": str(request.out), "repo_id": REPO_ID, "fps": source.fps,
            "seconds": round(time.time() - start, 1)}


def reach_summary(report: dict) -> str:
    """What :func:`write_reach_dataset` wrote, and the command that pretrains on it."""
    return (f"Wrote {report['num_demos']} biased PointReach demos (LeRobot format) to {report['lerobot_root']}\n"
            f"Next: uv run lightning fit -c conf/pretrain_reach.yaml --data.init_args.root={report['lerobot_root']}")


register_demo_source("reach", DemoSource(
    make_operator=lambda env, tier, bias: BiasedReachOperator(env, bias), rollout=record_episode,
    description="Reach the goal.", fps=20, write=write_reach_dataset, summary=reach_summary,
    output_names=LEROBOT_DATASET_NAMES, options={"bias": DEFAULT_BIAS}))


def generate_reach_dataset(num_demos: int, root: str | Path, bias: tuple[float, float] = DEFAULT_BIAS,
                           seed: int = 0, overwrite: bool = False) -> Path:
    """``generate_dataset("reach", ...)`` without a progress bar; returns the dataset folder ``root``."""
    return Path(generate_dataset("reach", num_demos, root, seed=seed, progress=False, overwrite=overwrite,
                                 bias=bias)["lerobot_root"])
