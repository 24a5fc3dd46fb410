"""One recorded demonstration episode: what the generators produce and the writers store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Episode:
    """One rollout of T steps. ``raw_obs`` (robomimic keys) and ``env_obs`` (env keys) hold T+1 observations."""

    tier: str
    seed: int
    model_file: str  # MuJoCo xml the episode ran in (robosuite re-samples object sizes on reset)
    raw_obs: list[dict[str, np.ndarray]]
    env_obs: list[dict[str, np.ndarray]]
    states: np.ndarray  # (T, state_dim) flattened MuJoCo state before each step, as robomimic stores it
    actions: np.ndarray  # (T, action_dim)
    rewards: np.ndarray  # (T,)
    successes: np.ndarray  # (T,) task success after each step
    dones: np.ndarray  # (T,)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(len(self) and self.successes[-1])
