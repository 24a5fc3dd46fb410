"""Simulated teleoperators: a scripted expert played at one quality tier, deterministic per seed.

The robomimic operators (:class:`zprl.data.experts.Operator`) and the MetaWorld ones
(:class:`zprl.data.metaworld_experts.MetaWorldOperator`) share how an operator hesitates: now and then it
pauses, arm still and gripper held, for a few steps. Each suite adds its own perturbation of the actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GRIPPER_OPEN = -1.0  # the gripper command an operator holds before its first action


@dataclass(frozen=True)
class OperatorProfile:
    """How one quality tier of simulated operator deviates from the scripted expert (fields common to all suites)."""

    action_noise: float = 0.0  # std of Gaussian noise on the arm's action dims
    hesitation_prob: float = 0.0  # per-step chance of starting a pause (arm still, gripper held)
    hesitation_steps: tuple[int, int] = (0, 0)  # inclusive range of pause lengths


class SimulatedOperator:
    """A scripted expert played at quality ``tier`` (a key of ``profiles``), with hesitations.

    Subclasses give the expert's action (:meth:`expert_action`, gripper command last), the perturbation of
    every action (:meth:`perturb`) and what they draw at the start of an episode (:meth:`start_episode`),
    all from ``self.rng``; ``action_size`` and ``action_dtype`` describe the action of a pause.

    Args:
        tier: the quality tier, e.g. ``"noisy"``.
        profiles: the suite's ``{tier: profile}``.
    """

    action_size: int
    action_dtype: type = np.float32

    def __init__(self, tier: str, profiles: Mapping[str, OperatorProfile]):
        if tier not in profiles:
            raise ValueError(f"Unknown quality tier {tier!r}. Choose one of {list(profiles)}.")
        self.tier = tier
        self.profile = profiles[tier]
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Start a new episode (after ``env.reset``) with its own random stream."""
        self.rng = np.random.default_rng(seed)
        self._pause_left = 0
        self._gripper = GRIPPER_OPEN
        self.start_episode()

    def act(self) -> np.ndarray:
        """The next action, clipped to [-1, 1]."""
        p = self.profile
        if self._pause_left == 0 and self.rng.random() < p.hesitation_prob:
            self._pause_left = int(self.rng.integers(p.hesitation_steps[0], p.hesitation_steps[1] + 1))
        if self._pause_left > 0:
            self._pause_left -= 1
            action = np.zeros(self.action_size, dtype=self.action_dtype)
            action[-1] = self._gripper
        else:
            action = self.expert_action()
            self._gripper = action[-1]
        return np.clip(self.perturb(action), -1.0, 1.0).astype(np.float32)

    def start_episode(self) -> None:
        """Per-episode draws (called by :meth:`reset`); none by default."""

    def expert_action(self) -> np.ndarray:
        raise NotImplementedError

    def perturb(self, action: np.ndarray) -> np.ndarray:
        """``action`` as this operator executes it (before clipping); unchanged by default."""
        return action
