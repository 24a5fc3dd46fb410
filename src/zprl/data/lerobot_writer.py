"""Write demonstration episodes as a local LeRobot v3 dataset (lerobot 0.6).

Frames carry the environment's own observation keys (``observation.state``,
``observation.environment_state``, ``observation.images.<camera>``), ``action``, the outcome of the step
(``next.reward``, ``next.done``, ``next.success``) and ``quality_tier`` (see
:data:`zprl.data.experts.TIER_IDS`: 0 expert, 1 noisy, 2 poor). Images are stored as image frames, not
video, so no FFmpeg is needed. Reload with ``LeRobotDataset(repo_id, root=root)`` (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from zprl.data.episode import Episode
from zprl.data.experts import TIER_IDS
from zprl.data.schema import ACTION, DONE, IMAGE_PREFIX, OBS_PREFIX, REWARD, SUCCESS

SCALAR = (1,)


@contextmanager
def quiet_datasets_progress():
    """Silence the Hugging Face ``datasets`` progress bar that every ``save_episode`` would print."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def lerobot_features(observation_space: gym.spaces.Dict, action_dim: int) -> dict:
    """LeRobot feature spec for an env's observation space plus action, step outcome and quality tier."""
    features = {}
    for key, space in observation_space.spaces.items():
        if key.startswith(IMAGE_PREFIX):
            features[key] = {"dtype": "image", "shape": space.shape, "names": ["height", "width", "channels"]}
        else:
            features[key] = {"dtype": "float32", "shape": space.shape, "names": None}
    features[ACTION] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    features[REWARD] = {"dtype": "float32", "shape": SCALAR, "names": None}
    features[DONE] = {"dtype": "bool", "shape": SCALAR, "names": None}
    features[SUCCESS] = {"dtype": "bool", "shape": SCALAR, "names": None}
    features["quality_tier"] = {"dtype": "int64", "shape": SCALAR, "names": None}
    return features


class LeRobotWriter:
    """Streams episodes into ``LeRobotDataset.create(...)``; :meth:`close` finalizes the dataset."""

    def __init__(self, root: str | Path, repo_id: str, fps: int, features: dict, task_description: str):
        # no videos are written, so skip lerobot's probing of torchcodec for a video decoder
        self.dataset = LeRobotDataset.create(repo_id, fps, features=features, root=root, use_videos=False,
                                             video_backend="pyav")
        self.obs_keys = [key for key in features if key.startswith(OBS_PREFIX)]
        self.task_description = task_description

    def write_episode(self, episode: Episode) -> None:
        """Add one episode: frame t holds the observation before action t and the outcome of that step."""
        tier = np.array([TIER_IDS[episode.tier]], dtype=np.int64)
        for t in range(len(episode)):
            frame = {key: episode.env_obs[t][key] for key in self.obs_keys}
            frame.update({
                ACTION: episode.actions[t].astype(np.float32),
                REWARD: np.array([episode.rewards[t]], dtype=np.float32),
                DONE: np.array([episode.dones[t]], dtype=bool),
                SUCCESS: np.array([episode.successes[t]], dtype=bool),
                "quality_tier": tier,
                "task": self.task_description,
            })
            self.dataset.add_frame(frame)
        with quiet_datasets_progress():
            self.dataset.save_episode()

    def close(self) -> None:
        self.dataset.finalize()
