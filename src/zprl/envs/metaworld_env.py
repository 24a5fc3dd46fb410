"""Gymnasium wrapper around MetaWorld (v3) single-task environments (box-close, push-wall)."""

from __future__ import annotations

from importlib.metadata import version
from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from zprl.data.schema import ENV_STATE, IMAGE_PREFIX, STATE
from zprl.envs.tasks import METAWORLD_NAME_TO_TASK, get_task

# MetaWorld's flat observation: hand pos (3), gripper opening (1), object slots (14, zero-padded),
# the same 18 values of the previous step, goal pos (3).
OBJECT_START, GOAL_SLICE = 4, slice(36, 39)
FINGER_SITES = ("rightEndEffector", "leftEndEffector")
RENDER_CAMERA = "corner2"
# MetaWorld's own step limit (``SawyerXYZEnv.max_path_length``): it raises once an episode reaches it.
# zprl's TimeLimit ends episodes first, so the inner counter is lifted out of the way.
NO_INNER_LIMIT = 2**62


def metaworld_env_class(sim_name: str) -> type:
    """The MetaWorld v3 environment class for ``sim_name`` (e.g. ``box-close-v3``), with a clear error."""
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    except ImportError as err:
        raise ImportError("MetaWorld is not installed; zprl's box_close / push_wall tasks need it. Install it with "
                          "`uv sync` (pyproject pins metaworld==3.1.1) or `pip install metaworld==3.1.1`.") from err
    if sim_name not in METAWORLD_NAME_TO_TASK:
        raise ValueError(f"Unknown MetaWorld task {sim_name!r}. zprl supports {sorted(METAWORLD_NAME_TO_TASK)} "
                         f"(zprl names {sorted(METAWORLD_NAME_TO_TASK.values())}); another MetaWorld task needs a "
                         "TaskSpec in zprl/envs/tasks.py and a scripted policy in zprl/data/metaworld_experts.py.")
    return ALL_V3_ENVIRONMENTS[sim_name]


def default_env_meta(task: str) -> dict:
    """Environment metadata stored as robomimic ``env_args``; ``make_env(env_meta=...)`` rebuilds the env."""
    spec = get_task(task)
    if spec.suite != "metaworld":
        raise ValueError(f"Task {task!r} is not a MetaWorld task.")
    return {"env_name": spec.sim_name, "env_version": version("metaworld"), "type": "metaworld",
            "env_kwargs": {"goal_observable": True}}


class MetaWorldEnv(gym.Env):
    """A MetaWorld v3 task as a Gymnasium env with LeRobot-style observation keys.

    Observations: ``observation.state`` is the robot (hand position and the two fingertip positions, 9 values
    as the authors' ``agent_pos``), ``observation.environment_state`` the task's object pose(s) and the goal
    position (goal-observable, as MetaWorld's MT1), and per camera ``observation.images.<camera>`` (HxWx3
    uint8, MuJoCo offscreen rendering; set ``MUJOCO_GL=egl`` on headless machines). Actions are MetaWorld's:
    hand displacement (3) and gripper effort (1) in [-1, 1]. Reward is sparse (1.0 on MetaWorld's
    ``info["success"]``, which terminates); ``info["is_success"]`` is always present. A MuJoCo instability
    (MuJoCo's reset of a NaN / Inf state) truncates the episode with ``info["env_crashed"] = True``.

    Object and goal placements are drawn at every reset from the env's own ``np_random`` (MetaWorld's
    ``seeded_rand_vec`` mode), so ``reset(seed=s)`` always gives the same placement and different seeds give
    different ones, independently of other envs and of numpy's global generator.

    Args:
        task: zprl task name (``box_close``, ``push_wall``) or MetaWorld name (``box-close-v3``).
        env_meta: metadata from :func:`default_env_meta` (e.g. a dataset's ``env_args``); overrides ``task``.
        camera_names: MetaWorld cameras to observe (``corner``, ``corner2``, ``corner3``, ``topview``, ...).
        camera_size: side of the square camera images.
        render_mode: ``"rgb_array"`` to let :meth:`render` return frames (for videos).
        render_camera: camera of :meth:`render`.
        render_size: side of the :meth:`render` frames.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = "box_close", env_meta: dict | None = None,
                 camera_names: tuple[str, ...] | list[str] = (), camera_size: int = 84,
                 render_mode: str | None = None, render_camera: str = RENDER_CAMERA, render_size: int = 256):
        self.task = get_task(env_meta["env_name"] if env_meta is not None else task)
        self.env_meta = env_meta if env_meta is not None else default_env_meta(self.task.name)
        self.sim_env = metaworld_env_class(self.task.sim_name)()
        # MetaWorld's private switches, set here only: goal-observable single-task mode as its own
        # `*-goal-observable` classes (metaworld/env_dict.py), placements drawn from the env's generator.
        self.sim_env._partially_observable = not self.env_meta["env_kwargs"].get("goal_observable", True)
        del self.sim_env.sawyer_observation_space  # cached property: recomputed for the observability above
        self.sim_env._set_task_called = True
        self.sim_env._freeze_rand_vec = False
        self.sim_env.seeded_rand_vec = True
        self.sim_env.max_path_length = NO_INNER_LIMIT
        self.model, self.data = self.sim_env.model, self.sim_env.data
        # views into MuJoCo's site positions (updated in place by every step), cheaper than a lookup per step
        self._fingers = tuple(self.data.site_xpos[self.model.site(name).id] for name in FINGER_SITES)
        self.camera_names, self.camera_size = tuple(camera_names), camera_size
        self.render_mode, self.render_camera, self.render_size = render_mode, render_camera, render_size
        self._renderers: dict[int, mujoco.Renderer] = {}
        for cam in self.camera_names:
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                cameras = [self.model.camera(i).name for i in range(self.model.ncam)]
                raise ValueError(f"MetaWorld has no camera {cam!r}; choose from {cameras}.")

        raw, _ = self._reset_sim()  # placements need a reset before the observation layout is known
        num_object = len(self.sim_env._get_pos_objects()) + len(self.sim_env._get_quat_objects())
        self._env_state_index = np.r_[OBJECT_START:OBJECT_START + num_object, GOAL_SLICE]
        self.last_obs = self._observation(raw)
        spaces = {key: gym.spaces.Box(-np.inf, np.inf, value.shape, np.float32) for key, value in self.last_obs.items()
                  if not key.startswith(IMAGE_PREFIX)}
        for cam in self.camera_names:
            spaces[IMAGE_PREFIX + cam] = gym.spaces.Box(0, 255, (camera_size, camera_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def _reset_sim(self) -> tuple[np.ndarray, dict]:
        self.sim_env.np_random = self.np_random  # placements come from this env's generator
        raw, info = self.sim_env.reset()
        self.last_raw_obs = raw
        return raw, info

    def _observation(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        obs = {STATE: np.concatenate((raw[:3], *self._fingers), dtype=np.float32),
               ENV_STATE: raw[self._env_state_index].astype(np.float32)}
        for cam in self.camera_names:
            obs[IMAGE_PREFIX + cam] = self._render_camera(cam, self.camera_size)
        return obs

    def _render_camera(self, camera: str, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render().copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        raw, _ = self._reset_sim()
        self.last_obs = self._observation(raw)
        return self.last_obs, {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32).clip(-1.0, 1.0)
        time_before = self.data.time
        raw, _, _, _, info = self.sim_env.step(action)
        # MuJoCo resets the simulation (time back to 0) when its state turns NaN, Inf or huge, with only a
        # warning; episodes start after MetaWorld's 50-step hand reset, so time never goes back otherwise.
        if self.data.time < time_before:  # truncate; the vector env resets this worker
            return self._crashed("MuJoCo reset the unstable simulation (NaN, Inf or huge state)")
        self.last_raw_obs = raw
        self.last_obs = self._observation(raw)
        success = bool(info["success"])
        return self.last_obs, float(success), success, False, {"is_success": success}

    def _crashed(self, message: str):
        return self.last_obs, 0.0, False, True, {
            "is_success": False, "env_crashed": True, "crash_message": message}

    # Simulator state access, used by data generation (robomimic ``states``) and replay tests.
    def get_sim_state(self) -> np.ndarray:
        """Flat MuJoCo state: qpos, qvel, mocap position and quaternion (the hand is mocap-driven)."""
        d = self.data
        return np.concatenate([d.qpos, d.qvel, d.mocap_pos.ravel(), d.mocap_quat.ravel()]).copy()

    def reset_to(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Set the state from :meth:`get_sim_state` in the current placement (``reset(seed=...)`` first)."""
        m, d = self.model, self.data
        sizes = np.cumsum([m.nq, m.nv, 3 * m.nmocap])
        qpos, qvel, mocap_pos, mocap_quat = np.split(np.asarray(state, dtype=np.float64), sizes)
        d.qpos[:], d.qvel[:] = qpos, qvel
        d.mocap_pos[:], d.mocap_quat[:] = mocap_pos.reshape(-1, 3), mocap_quat.reshape(-1, 4)
        mujoco.mj_forward(m, d)
        raw = self.sim_env._get_obs()
        raw[18:36] = raw[:18]  # no frame history after a jump; zprl's observations do not use it
        self.last_raw_obs = raw
        self.last_obs = self._observation(raw)
        return self.last_obs

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._render_camera(self.render_camera, self.render_size)

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self.sim_env.close()
