"""PushT (gym-pusht) with LeRobot-style observation keys and a sparse success reward."""

from __future__ import annotations

import gc
import weakref

import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
import gymnasium as gym
import numpy as np

from zprl.data.schema import ENV_STATE, STATE


def _release_pymunk_space(env: gym.Env) -> None:
    """Drop gym-pusht's pymunk objects (space, bodies, collision handler) and collect them now."""
    for name in ("collision_handeler", "agent", "block", "_block_shapes", "space"):  # gym-pusht's attribute names
        if hasattr(env, name):
            setattr(env, name, None)
    gc.collect()


class PushTEnv(gym.Wrapper):
    """gym-pusht's ``environment_state_agent_pos`` observations renamed to LeRobot keys.

    ``observation.state`` is the agent position (2), ``observation.environment_state`` the 16 T-block
    keypoints. Reward is 1.0 on success (coverage above gym-pusht's threshold), which terminates.
    """

    def __init__(self, render_mode: str | None = None, camera_names: tuple[str, ...] | list[str] = (), **kwargs):
        if camera_names:
            raise ValueError("PushT in zprl uses state observations; drop `camera_names` for this task.")
        super().__init__(gym.make("gym_pusht/PushT-v0", obs_type="environment_state_agent_pos",
                                  render_mode=render_mode or "rgb_array", **kwargs).unwrapped)
        inner = self.env.observation_space
        self.observation_space = gym.spaces.Dict({
            STATE: gym.spaces.Box(-np.inf, np.inf, inner["agent_pos"].shape, np.float32),
            ENV_STATE: gym.spaces.Box(-np.inf, np.inf, inner["environment_state"].shape, np.float32),
        })
        self.action_space = gym.spaces.Box(self.env.action_space.low.astype(np.float32),
                                           self.env.action_space.high.astype(np.float32), dtype=np.float32)
        # Free the pymunk space at close, or at the latest when the interpreter starts to exit (finalizers run
        # while it is intact): freed during the exit itself, its collision callback (a bound method, so space
        # and env form a cycle) runs after cffi is torn down and segfaults.
        self._release_space = weakref.finalize(self, _release_pymunk_space, self.env)

    @staticmethod
    def _observation(obs: dict) -> dict[str, np.ndarray]:
        return {STATE: np.asarray(obs["agent_pos"], np.float32),
                ENV_STATE: np.asarray(obs["environment_state"], np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs), {"is_success": False}

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("is_success", False))
        return self._observation(obs), float(success), success, truncated, {"is_success": success}

    def close(self):
        super().close()
        self._release_space()
