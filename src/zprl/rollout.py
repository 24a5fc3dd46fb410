"""Run a LeRobot-style policy (pre-processor -> policy -> post-processor) on a Gymnasium vector env."""

from __future__ import annotations

import numpy as np
import torch

from zprl.data.schema import IMAGE_PREFIX


def env_obs_to_batch(obs: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Batched env observations (numpy, images HxWx3 uint8) -> policy tensors (images CHW float in [0, 1])."""
    batch = {}
    for key, value in obs.items():
        tensor = torch.as_tensor(np.asarray(value), device=device)
        if key.startswith(IMAGE_PREFIX):
            tensor = tensor.permute(0, 3, 1, 2).float() / 255.0
        batch[key] = tensor.float()
    return batch


class LeRobotRolloutPolicy:
    """A ``RolloutPolicy`` (see zprl.evaluation) around a LeRobot policy and its processors.

    Uses the policy's own ``select_action`` observation/action queues, so every env of the vector env
    must start its episode together (the Evaluator runs rounds in lockstep).
    """

    def __init__(self, policy, preprocessor, postprocessor, device: torch.device | str = "cpu"):
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.device = torch.device(device)

    def reset(self) -> None:
        self.policy.reset()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = self.preprocessor(env_obs_to_batch(obs, self.device))
        action = self.postprocessor(self.policy.select_action(batch))
        return action.detach().cpu().numpy()

