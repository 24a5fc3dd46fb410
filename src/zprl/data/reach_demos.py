"""Scripted PointReach demos with a systematic aiming bias: a base policy that online RL must correct."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from zprl.data.generate import Episode
from zprl.data.lerobot_writer import LeRobotWriter, lerobot_features
from zprl.envs import make_env
from zprl.envs.reach import scripted_reach_action


def generate_reach_dataset(num_demos: int, root: str | Path, bias: tuple[float, float] = (0.1, 0.0),
                           seed: int = 0, repo_id: str = "zprl/reach_biased", overwrite: bool = False) -> Path:
    """Write ``num_demos`` PointReach episodes of an operator aiming at ``goal + bias`` as a LeRobot dataset.

    All episodes are kept, successful or not, so a policy imitating them inherits the bias and only
    succeeds when the goal lies along the bias direction. An existing dataset at ``root`` is replaced
    only with ``overwrite``.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not (overwrite and (root / "meta" / "info.json").exists()):
            raise FileExistsError(f"{root} exists and is not empty. Pass another --out, delete it, or pass "
                                  "--overwrite (overwrite=True) to replace the LeRobot dataset in it.")
        shutil.rmtree(root)
    elif root.exists():
        root.rmdir()  # LeRobot creates the dataset folder itself
    env = make_env("reach")
    writer = LeRobotWriter(root, repo_id, fps=20, features=lerobot_features(env.observation_space, 2),
                           task_description="Reach the goal.")
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
    env.close()
    return root
