"""Simulated operators on MetaWorld's scripted policies, and the demo sources of ``box_close`` / ``push_wall``.

MetaWorld ships a scripted expert per task (``metaworld.policies``), a state machine over the flat 39-d
observation. A :class:`MetaWorldOperator` plays it at one quality tier, as the robomimic operators of
:mod:`zprl.data.experts` do: ``expert`` is clean, ``noisy`` adds Gaussian noise on the hand displacement
and short hesitations, ``poor`` adds larger noise, a constant per-episode offset on the displacement and
longer hesitations. Mixed together (only successful attempts are kept) they give "medium-expert" data.

Replay: each demo's ``states`` in the robomimic HDF5 are :meth:`MetaWorldEnv.get_sim_state` (qpos, qvel,
mocap position and quaternion) before every step. The object and goal placement are model fields set at
reset, not part of that state: ``env.reset(seed=demo.attrs["seed"])`` restores them, then
``env.reset_to(states[t])`` reproduces observation ``t``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from zprl.data.episode import Episode
from zprl.data.generate import DemoSource, record_episode, register_demo_source
from zprl.data.operators import OperatorProfile, SimulatedOperator
from zprl.data.schema import ENV_STATE, IMAGE_PREFIX, STATE
from zprl.envs.metaworld_env import MetaWorldEnv

FPS = 80  # MetaWorld steps the simulation 5 x 2.5 ms per action
SCRIPTED_POLICIES = {"box_close": "SawyerBoxCloseV3Policy", "push_wall": "SawyerPushWallV3Policy"}
DESCRIPTIONS = {"box_close": "Grasp the lid and close the box with it.",
                "push_wall": "Push the puck around the wall to the goal."}
DISPLACEMENT = slice(0, 3)  # action dims of the hand displacement; dim 3 is the gripper effort


@dataclass(frozen=True)
class MetaWorldProfile(OperatorProfile):
    """How one quality tier of simulated operator deviates from MetaWorld's scripted policy.

    ``action_noise`` applies to the hand displacement.
    """

    offset: float = 0.0  # std of a constant per-episode offset on the hand displacement


# One profile per name in zprl.data.schema.QUALITY_TIERS.
METAWORLD_OPERATOR_PROFILES: dict[str, MetaWorldProfile] = {
    "expert": MetaWorldProfile(),
    "noisy": MetaWorldProfile(action_noise=0.3, hesitation_prob=0.03, hesitation_steps=(3, 8)),
    "poor": MetaWorldProfile(action_noise=0.5, hesitation_prob=0.03, hesitation_steps=(8, 20), offset=0.15),
}


def scripted_policy(task: str):
    """MetaWorld's scripted expert for ``task``."""
    from metaworld import policies

    return getattr(policies, SCRIPTED_POLICIES[task])()


class MetaWorldOperator(SimulatedOperator):
    """A MetaWorld scripted policy played at one quality tier, deterministic per seed.

    Reads the env's latest flat observation (``env.last_raw_obs``), as a teleoperator watches the scene.
    """

    action_size, action_dtype = 4, np.float64

    def __init__(self, env: MetaWorldEnv, task: str, tier: str):
        self.env = env
        self.policy = scripted_policy(task)
        super().__init__(tier, METAWORLD_OPERATOR_PROFILES)

    def start_episode(self) -> None:
        self._offset = self.rng.normal(0.0, self.profile.offset, 3)

    def expert_action(self) -> np.ndarray:
        with warnings.catch_warnings():  # the scripted gains overshoot [-1, 1] by design; the env clips
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(self.policy.get_action(self.env.last_raw_obs), dtype=np.float64)

    def perturb(self, action: np.ndarray) -> np.ndarray:
        action[DISPLACEMENT] += self._offset + self.rng.normal(0.0, self.profile.action_noise, 3)
        return action


def rollout(env: gym.Env, operator: MetaWorldOperator, seed: int) -> Episode:
    """One attempt of ``operator`` in the time-limited MetaWorld ``env``, with what the robomimic HDF5 stores."""
    base: MetaWorldEnv = env.unwrapped
    episode = record_episode(env, operator, seed, sim_state=base.get_sim_state,
                             raw_obs=lambda obs: robomimic_obs(obs, base.camera_names))
    episode.model_file = base.sim_env.model_name
    return episode


def robomimic_obs(obs: dict[str, np.ndarray], camera_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """robomimic HDF5 observation keys: ``agent_pos`` (robot), ``object`` (objects and goal), ``<cam>_image``."""
    raw = {"agent_pos": obs[STATE], "object": obs[ENV_STATE]}
    raw.update({f"{cam}_image": obs[IMAGE_PREFIX + cam] for cam in camera_names})
    return raw


for name, description in DESCRIPTIONS.items():
    register_demo_source(name, DemoSource(
        make_operator=lambda env, tier, task=name: MetaWorldOperator(env, task, tier), rollout=rollout,
        description=description, fps=FPS, env_meta=lambda env: env.env_meta))
