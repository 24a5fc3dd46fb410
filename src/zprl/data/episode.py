"""One recorded demonstration episode: what the demo generators produce and the writers store."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One rollout of T steps: T+1 observations (``env_obs``, env keys), T actions and step outcomes.

    ``raw_obs``, ``states`` and ``model_file`` are what a robomimic HDF5 stores besides; a source that writes
    only LeRobot data leaves them empty.
    """

    tier: str  # quality tier of the operator (zprl.data.schema.QUALITY_TIERS)
    seed: int  # env.reset(seed=...) and operator.reset(...) of the episode
    env_obs: list[dict[str, np.ndarray]]
    actions: np.ndarray  # (T, action_dim)
    rewards: np.ndarray  # (T,)
    successes: np.ndarray  # (T,) task success after each step
    dones: np.ndarray  # (T,)
    raw_obs: list[dict[str, np.ndarray]] = field(default_factory=list)  # T+1 observations under robomimic keys
    states: np.ndarray | None = None  # (T, state_dim) simulator state before each step, as robomimic stores it
    model_file: str = ""  # MuJoCo xml the episode ran in (robosuite re-samples object sizes on reset)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(len(self) and self.successes[-1])
