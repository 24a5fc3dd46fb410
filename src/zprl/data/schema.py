"""The one batch schema every zprl data source produces, and the dataset facts a policy is built from.

A sample holds LeRobot-style keys (see docs/INTERFACES.md): ``observation.state`` and
``observation.environment_state`` stacked over ``n_obs_steps`` frames, ``observation.images.<cam>`` as
float CHW in [0, 1], ``action`` over ``horizon`` frames starting ``n_obs_steps - 1`` frames in the past,
and ``action_is_pad`` marking frames outside the episode (LeRobot's delta-timestamp convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LeRobot's feature keys, under LeRobot's names (``lerobot.utils.constants``). Spelled here, not imported:
# importing ``lerobot.utils`` imports torch, which every simulator worker importing zprl.envs would pay (see
# zprl.lerobot_registration); tests/test_envs.py checks that they equal LeRobot's.
OBS_PREFIX = "observation."
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGES = "observation.images"
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"

IMAGE_PREFIX = OBS_IMAGES + "."  # a camera's key is IMAGE_PREFIX + camera name
ACTION_IS_PAD = ACTION + "_is_pad"  # marks action frames outside the episode (LeRobot's delta timestamps)
STATE = OBS_STATE
ENV_STATE = OBS_ENV_STATE


def observation_frame_offsets(n_obs_steps: int) -> list[int]:
    """Frame offsets of the observation history relative to the current frame: [-(n-1), ..., 0]."""
    return list(range(1 - n_obs_steps, 1))


def action_frame_offsets(n_obs_steps: int, horizon: int) -> list[int]:
    """Frame offsets of the action chunk: ``horizon`` frames starting at the oldest observation."""
    return list(range(1 - n_obs_steps, horizon - n_obs_steps + 1))


@dataclass
class DatasetSpec:
    """Shapes and provenance of a dataset: everything needed to build a matching policy and env."""

    state_dim: int
    env_state_dim: int
    action_dim: int
    camera_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] = (3, 84, 84)
    fps: int = 20
    task: str | None = None  # zprl task name, for rollouts
    env_meta: dict | None = None  # robomimic env_args, when the data came from robomimic
    num_episodes: int = 0
    num_frames: int = 0


def array_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot-format statistics (min, max, mean, std) over the leading axis of a (N, D) array."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("The dataset contains NaN or infinite values; regenerate or clean it before training.")
    return {
        "min": values.min(0).astype(np.float32),
        "max": values.max(0).astype(np.float32),
        "mean": values.mean(0).astype(np.float32),
        "std": values.std(0).astype(np.float32),
        "count": np.array([len(values)]),
    }


def image_stats(images_hwc_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel image statistics in LeRobot's (3, 1, 1) layout for images scaled to [0, 1]."""
    pixels = images_hwc_uint8.reshape(-1, images_hwc_uint8.shape[-1]).astype(np.float64) / 255.0
    stats = array_stats(pixels)
    return {k: (v.reshape(-1, 1, 1) if k != "count" else v) for k, v in stats.items()}

# Operator-quality tiers of mixed-quality data, in the order of the LeRobot ``quality_tier`` column
# (0, 1, 2) and the names of the robomimic HDF5 masks.
QUALITY_TIERS = ("expert", "noisy", "poor")
