"""Scripted PointReach demos with a systematic aiming bias: a base policy that online RL must correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zprl.data.episode import Episode
from zprl.data.generate import close_quietly, staged_output
from zprl.data.lerobot_writer import LeRobotWriter, lerobot_features
from zprl.envs import make_env
from zprl.envs.reach import scripted_reach_action

LEROBOT_DATASET_NAMES = frozenset({"meta", "data", "videos", "images"})  # what a LeRobot v3 dataset root holds


def generate_reach_dataset(num_demos: int, root: str | Path, bias: tuple[float, float] = (0.1, 0.0),
                           seed: int = 0, repo_id: str = "zprl/reach_biased", overwrite: bool = False) -> Path:
    """Write ``num_demos`` PointReach episodes of an operator aiming at ``goal + bias`` as a LeRobot dataset.

    All episodes are kept, successful or not, so a policy imitating them inherits the bias and only
    succeeds when the goal lies along the bias direction. An existing dataset at ``root`` is replaced
    only with ``overwrite``, and never when the folder holds other files; the dataset is written beside
    ``root`` and moved into place when complete (see ``zprl.data.generate.staged_output``).
    """
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}.")
    root = Path(root)
    with staged_output(root, overwrite, owned=LEROBOT_DATASET_NAMES) as staging:  # LeRobot creates the folder
        _write_reach_demos(num_demos, staging, bias, seed, repo_id)
    return root


def _write_reach_demos(num_demos: int, root: Path, bias: tuple[float, float], seed: int, repo_id: str) -> None:
    env = make_env("reach")
    writer = LeRobotWriter(root, repo_id, fps=20, features=lerobot_features(env.observation_space, 2),
                           task_description="Reach the goal.")
    try:
        bias = np.asarray(bias, np.float32)
        for index in range(num_demos):
            obs, _ = env.reset(seed=seed + index)
            observations, actions, rewards, successes, dones = [obs], [], [], [], []
            done = False
            while not done:
                action = scripted_reach_action(obs, bias)
                obs, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                observations.append(obs)
                actions.append(action)
                rewards.append(reward)
                successes.append(info["is_success"])
                dones.append(done)
            writer.write_episode(Episode("expert", seed + index, "", [], observations, np.zeros((len(actions), 0)),
                                         np.asarray(actions), np.asarray(rewards), np.asarray(successes),
                                         np.asarray(dones)))
        writer.close()
    except BaseException:
        close_quietly(writer)
        raise
    finally:
        env.close()
