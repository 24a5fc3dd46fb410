"""Gymnasium wrapper around robomimic's robosuite environments (Lift, PickPlaceCan, NutAssemblySquare)."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np

# isort: off
import zprl.compat  # noqa: F401  (mujoco_py stand-in, must precede robomimic's env import)
import robomimic.utils.env_utils as EnvUtils
import robomimic.utils.obs_utils as ObsUtils
import robosuite
# isort: on

from zprl.data.schema import ENV_STATE, IMAGE_PREFIX, STATE
from zprl.envs.tasks import get_task
from zprl.logging_setup import quiet_stdout

# Robot proprioception that forms LeRobot's ``observation.state``; robomimic's ``object`` key forms
# ``observation.environment_state``. These are robomimic's standard low-dim keys.
STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
ENV_STATE_KEY = "object"


def default_env_meta(task: str, camera_names: tuple[str, ...] = (), camera_size: int = 84) -> dict:
    """robomimic ``env_args`` for a task, as stored in robomimic's own v0.1 datasets (OSC_POSE, 20 Hz)."""
    spec = get_task(task)
    if spec.suite != "robomimic":
        raise ValueError(f"Task {task!r} is not a robomimic task.")
    env_kwargs = {
        "has_renderer": False,
        "has_offscreen_renderer": bool(camera_names),
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": bool(camera_names),
        "control_freq": 20,
        "controller_configs": robosuite.load_controller_config(default_controller="OSC_POSE"),
        "robots": ["Panda"],
        "camera_depths": False,
        "camera_heights": camera_size,
        "camera_widths": camera_size,
        "reward_shaping": False,
    }
    if camera_names:
        env_kwargs["camera_names"] = list(camera_names)
    return {"env_name": spec.sim_name, "env_version": robosuite.__version__, "type": 1, "env_kwargs": env_kwargs}


def _register_obs_modalities(camera_names: tuple[str, ...]) -> None:
    """robomimic routes image keys through ObsUtils; it must know which keys are rgb before any reset."""
    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": [*STATE_KEYS, ENV_STATE_KEY], "rgb": [f"{c}_image" for c in camera_names]}}
    )


class RobomimicEnv(gym.Env):
    """A robomimic robosuite task as a Gymnasium env with LeRobot-style observation keys.

    Observations: ``observation.state`` (eef pos, quat, gripper qpos), ``observation.environment_state``
    (robomimic ``object``) and, per camera, ``observation.images.<camera>`` as HxWx3 uint8. Reward is
    sparse (1.0 on success, which terminates the episode); ``info["is_success"]`` is always present.
    A MuJoCo instability inside ``step`` truncates the episode with ``info["env_crashed"] = True``
    instead of raising, so one bad rollout does not kill a long run.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "lift",
        env_meta: dict | None = None,
        camera_names: tuple[str, ...] | list[str] = (),
        camera_size: int = 84,
        render_mode: str | None = None,
        render_camera: str = "agentview",
        render_size: int = 256,
    ):
        self.camera_names = tuple(camera_names)
        self.env_meta = copy.deepcopy(env_meta) if env_meta is not None else default_env_meta(
            task, self.camera_names, camera_size)
        self.task = get_task(self.env_meta["env_name"])
        if self.camera_names:
            kw = self.env_meta["env_kwargs"]
            kw.update(camera_names=list(self.camera_names), camera_heights=camera_size, camera_widths=camera_size,
                      has_offscreen_renderer=True, use_camera_obs=True)
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = render_size
        with quiet_stdout():  # robomimic prints its obs spec and env name for every env
            _register_obs_modalities(self.camera_names)
            self.robomimic_env = EnvUtils.create_env_from_metadata(
                env_meta=self.env_meta,
                render=False,
                render_offscreen=bool(self.camera_names) or render_mode == "rgb_array",
                use_image_obs=bool(self.camera_names),
            )
        self.robomimic_env.postprocess_visual_obs = False  # keep uint8 HWC; the policy normalises
        self._placement_rng_state = None  # this env's own numpy stream for robosuite's placements (see reset)
        raw = self.robomimic_env.reset()
        spaces = {
            STATE: gym.spaces.Box(-np.inf, np.inf, (self._state(raw).shape[0],), np.float32),
            ENV_STATE: gym.spaces.Box(-np.inf, np.inf, (raw[ENV_STATE_KEY].shape[0],), np.float32),
        }
        for cam in self.camera_names:
            spaces[IMAGE_PREFIX + cam] = gym.spaces.Box(0, 255, (camera_size, camera_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        low, high = self.robomimic_env.env.action_spec
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.last_raw_obs = raw

    @staticmethod
    def _state(raw: dict) -> np.ndarray:
        return np.concatenate([np.asarray(raw[k], dtype=np.float32) for k in STATE_KEYS])

    def _observation(self, raw: dict) -> dict[str, np.ndarray]:
        obs = {
            STATE: self._state(raw),
            ENV_STATE: np.asarray(raw[ENV_STATE_KEY], dtype=np.float32),
        }
        for cam in self.camera_names:
            obs[IMAGE_PREFIX + cam] = np.ascontiguousarray(raw[f"{cam}_image"], dtype=np.uint8)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._placement_rng_state is None:
            self._placement_rng_state = np.random.RandomState(seed).get_state()
        raw = self._with_own_global_rng(self.robomimic_env.reset)
        self.last_raw_obs = raw
        return self._observation(raw), {"is_success": False}

    def _with_own_global_rng(self, fn):
        """Run ``fn`` with numpy's global generator set to this env's own stream, then restore both.

        robosuite's object placement samplers draw from numpy's global generator. Seeding it globally would
        let one env's reset (say an evaluation env of a synchronous vector env) replay another env's object
        placements; swapping the state in and out gives every env its own stream.
        """
        outer = np.random.get_state()
        np.random.set_state(self._placement_rng_state)
        try:
            return fn()
        finally:
            self._placement_rng_state = np.random.get_state()
            np.random.set_state(outer)

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        try:
            raw, _, _, _ = self.robomimic_env.step(action)
        except Exception as err:  # MuJoCo instability: truncate, let the vector env reset this worker
            return self._observation(self.last_raw_obs), 0.0, False, True, {
                "is_success": False, "env_crashed": True, "crash_message": str(err)}
        if not all(np.all(np.isfinite(v)) for v in raw.values() if isinstance(v, np.ndarray)):
            return self._observation(self.last_raw_obs), 0.0, False, True, {
                "is_success": False, "env_crashed": True, "crash_message": "non-finite observation"}
        self.last_raw_obs = raw
        success = bool(self.robomimic_env.is_success()["task"])
        return self._observation(raw), float(success), success, False, {"is_success": success}

    # Simulator state access, used by data generation (robomimic ``states``) and replay tests.
    def get_sim_state(self) -> dict:
        return self.robomimic_env.get_state()

    def reset_to(self, state: dict) -> dict[str, np.ndarray]:
        raw = self.robomimic_env.reset_to(state)
        self.last_raw_obs = raw
        return self._observation(raw)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.robomimic_env.render(mode="rgb_array", height=self.render_size, width=self.render_size,
                                         camera_name=self.render_camera)
