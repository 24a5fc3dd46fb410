"""Simulator environments: spaces, stepping, seeding, sparse success reward, vector envs, cameras."""

import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering; must precede robosuite's import

import numpy as np
import pytest

from zprl.data import schema
from zprl.envs import TASKS, make_env, make_vector_env
from zprl.evaluation import EVAL_SEED_OFFSET

OBS_KEYS = {"observation.state", "observation.environment_state"}
ACTION_DIMS = {"lift": 7, "can": 7, "square": 7, "box_close": 4, "push_wall": 4, "pusht": 2, "reach": 2}


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_env(request):
    env = make_env(request.param)
    yield request.param, env
    env.close()


def test_env_spaces_and_step(task_env):
    task, env = task_env
    assert set(env.observation_space.spaces) == OBS_KEYS
    assert env.action_space.shape == (ACTION_DIMS[task],)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    assert info["is_success"] is False
    env.action_space.seed(0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert "is_success" in info
        assert reward == float(info["is_success"]) == float(terminated)  # sparse: 1.0 only on success
    assert reward == 0.0 and not truncated  # five random steps do not solve any task


def test_env_seeding(task_env):
    _, env = task_env
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    other, _ = env.reset(seed=8)
    for key in OBS_KEYS:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["observation.environment_state"], other["observation.environment_state"])


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_vector_env_steps(asynchronous):
    envs = make_vector_env("lift", num_envs=2, asynchronous=asynchronous, max_episode_steps=3)
    try:
        obs, _ = envs.reset(seed=[0, 1])
        assert obs["observation.state"].shape == (2, 9)
        assert not np.array_equal(obs["observation.environment_state"][0], obs["observation.environment_state"][1])
        again, _ = envs.reset(seed=[0, 1])
        np.testing.assert_array_equal(obs["observation.environment_state"], again["observation.environment_state"])
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 7), dtype=np.float32))
        assert obs["observation.environment_state"].shape == (2, 10)
        np.testing.assert_array_equal(reward, 0.0)
        assert info["is_success"].shape == (2,)
        assert truncated.all() and not terminated.any()  # the 3-step time limit
    finally:
        envs.close()


def test_camera_observations():
    env = make_env("lift", camera_names=("agentview",), camera_size=32)
    try:
        obs, _ = env.reset(seed=0)
        image = obs["observation.images.agentview"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert image.std() > 0  # a rendered scene, not a blank buffer
        assert obs in env.observation_space
    finally:
        env.close()


def test_schema_keys_are_lerobots():
    """zprl.data.schema spells LeRobot's feature keys (importing them would cost the env workers torch)."""
    from lerobot.utils import constants

    for name in ("OBS_PREFIX", "OBS_STATE", "OBS_ENV_STATE", "OBS_IMAGES", "ACTION", "REWARD", "DONE", "SUCCESS"):
        assert getattr(schema, name) == getattr(constants, name), name
    assert (schema.STATE, schema.ENV_STATE) == (constants.OBS_STATE, constants.OBS_ENV_STATE)
    assert schema.IMAGE_PREFIX == constants.OBS_IMAGES + "." and schema.ACTION_IS_PAD == "action_is_pad"


def test_env_modules_import_neither_torch_nor_lerobot():
    code = ("import sys, zprl.envs.reach, zprl.envs.pusht_env, zprl.envs.metaworld_env\n"
            "print(sorted({'torch', 'lerobot'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.split()[-1] == "[]", result.stdout


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match="Unknown task 'stack'") as error:
        make_env("stack")
    assert all(repr(name) in str(error.value) for name in TASKS)
    with pytest.raises(ValueError, match="Unknown task 'stack'"):
        make_vector_env("stack", num_envs=2)


def test_num_envs_must_be_positive():
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_vector_env("pusht", num_envs=0)


def test_each_robomimic_env_owns_its_placement_rng():
    """An evaluation env's seeded reset must not replay its placements in a training env (one process)."""
    train, evaluation = make_env("lift"), make_env("lift")
    cube = "observation.environment_state"
    train.reset(seed=0)
    alone = train.reset()[0][cube]
    train.reset(seed=0)
    evaluation.reset(seed=EVAL_SEED_OFFSET)
    after_eval = train.reset()[0][cube]
    np.testing.assert_array_equal(after_eval, alone)  # the training stream continues as if alone
    assert not np.allclose(after_eval, evaluation.reset()[0][cube])
    state = np.random.get_state()[1].copy()
    train.reset(seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global generator is left alone
    train.close()
    evaluation.close()
