"""What zprl's rollouts (the Evaluator and the online ChunkCollector) read from a Gymnasium vector env.

Both step a vector env as :func:`zprl.envs.make_vector_env` builds it (auto-reset in Gymnasium's NEXT_STEP
mode: the step after an episode ends returns the reset observation and ignores that env's action) and read
per-env flags from its batched info dict.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode


def require_next_step_autoreset(envs: gym.vector.VectorEnv, user: str) -> None:
    """Raise a ValueError naming ``user`` unless ``envs`` auto-resets in NEXT_STEP mode (Gymnasium's default)."""
    mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if AutoresetMode(mode) != AutoresetMode.NEXT_STEP:
        raise ValueError(f"{user} needs a vector env with autoreset_mode=NEXT_STEP, got {mode}; build it with "
                         "zprl.envs.make_vector_env or leave Gymnasium's default.")


def info_flag(info: dict, key: str, num_envs: int) -> np.ndarray:
    """A boolean per env from a vector env's info dict (False where the key is absent or masked out)."""
    if key not in info:
        return np.zeros(num_envs, dtype=bool)
    return np.asarray(info[key], dtype=bool) & np.asarray(info.get(f"_{key}", True), dtype=bool)


def episode_succeeded(terminated: np.ndarray, info: dict) -> np.ndarray:
    """Per env: whether its episode ended in success at this step (the one success rule of zprl's rollouts).

    Success terminates every zprl task with ``info["is_success"]``; a time-limit truncation, a termination
    without success and a simulator crash (``info["env_crashed"]``, a truncation) never count.
    """
    terminated = np.asarray(terminated, dtype=bool)
    num_envs = len(terminated)
    return terminated & info_flag(info, "is_success", num_envs) & ~info_flag(info, "env_crashed", num_envs)
