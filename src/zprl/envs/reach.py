"""PointReach: a fast 2-D reaching task for learning tests and quick sanity checks of online RL."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from zprl.data.schema import ENV_STATE, STATE


class PointReachEnv(gym.Env):
    """A point mass moves with velocity actions towards a goal drawn at reset; success within ``radius``.

    ``observation.state`` is the point position (2) and ``observation.environment_state`` the goal (2);
    the action is a velocity in [-1, 1]^2 scaled by ``step_size``. Reward is 1.0 on success, which
    terminates. Simulates in microseconds, so RL can learn on it inside a unit test.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, radius: float = 0.08, step_size: float = 0.05, render_mode: str | None = None,
                 camera_names=()):
        if camera_names:
            raise ValueError("PointReach has no cameras; drop `camera_names` for this task.")
        self.radius, self.step_size, self.render_mode = radius, step_size, render_mode
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict({STATE: box, ENV_STATE: box})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        return {STATE: self.position.copy(), ENV_STATE: self.goal.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-0.1, 0.1, 2).astype(np.float32)
        angle = self.np_random.uniform(0, 2 * np.pi)
        self.goal = (0.6 * np.array([np.cos(angle), np.sin(angle)])).astype(np.float32)
        return self._observation(), {"is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self.position = np.clip(self.position + self.step_size * action, -1.0, 1.0).astype(np.float32)
        success = bool(np.linalg.norm(self.position - self.goal) < self.radius)
        return self._observation(), float(success), success, False, {"is_success": success}

    def render(self):
        image = np.full((64, 64, 3), 255, np.uint8)
        for point, color in ((self.goal, (0, 160, 0)), (self.position, (200, 0, 0))):
            col, row = ((point + 1.0) * 31.5).astype(int)
            image[max(row - 2, 0):row + 3, max(col - 2, 0):col + 3] = color
        return image


def scripted_reach_action(obs: dict[str, np.ndarray], bias: np.ndarray | None = None, step_size: float = 0.05):
    """Greedy expert towards the goal (plus an optional constant ``bias`` on the aim point)."""
    aim = obs[ENV_STATE] + (0 if bias is None else bias)
    return np.clip((aim - obs[STATE]) / step_size, -1.0, 1.0).astype(np.float32)
