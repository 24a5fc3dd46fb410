"""MetaWorld box_close / push_wall: env API, seeding, crashes, demos in both formats, tiny pretrain + online."""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from zprl.data.generate import generate_dataset, tier_counts
from zprl.data.metaworld_experts import MetaWorldOperator, rollout
from zprl.data.robomimic_writer import validate_robomimic_hdf5
from zprl.data.schema import ACTION, ENV_STATE, STATE
from zprl.envs import get_task, make_env, make_vector_env
from zprl.envs.metaworld_env import metaworld_env_class

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("box_close", "push_wall")
NUM_DEMOS = 3


@pytest.fixture(scope="module")
def box_close_env():
    env = make_env("box_close")
    yield env
    env.close()


@pytest.fixture(scope="module")
def box_close_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "box_close_tiny"
    report = generate_dataset("box_close", NUM_DEMOS, out, seed=0, progress=False)
    return out, report


def test_env_api_observations_and_time_limit(box_close_env):
    env = box_close_env
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info == {"is_success": False}
    assert obs[STATE].shape == (9,) and obs[ENV_STATE].shape == (10,)  # hand + fingertips; lid pose + goal
    assert env.action_space.shape == (4,) and get_task("box_close").max_episode_steps == 200
    for t in range(200):
        obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))  # the hand stays put
        assert reward == 0.0 and not terminated and info["is_success"] is False
        assert truncated == (t == 199)


@pytest.mark.parametrize("task", TASKS)
def test_scripted_expert_succeeds_and_success_terminates(task):
    env = make_env(task)
    episodes = [rollout(env, MetaWorldOperator(env.unwrapped, task, "expert"), seed) for seed in range(3)]
    env.close()
    assert sum(e.success for e in episodes) >= 2
    for episode in episodes:
        if episode.success:  # sparse reward only on the terminal success step
            assert episode.dones[-1] and episode.rewards[-1] == 1.0 and episode.rewards[:-1].sum() == 0
            assert len(episode) < 200


def test_seeded_reset_is_deterministic_per_env(box_close_env):
    other = make_env("box_close")
    rng = np.random.default_rng(0)
    other.reset(seed=1)
    for _ in range(20):  # a different history before the seeded reset
        other.step(rng.uniform(-1, 1, 4))
    first, _ = box_close_env.reset(seed=7)
    again, _ = other.reset(seed=7)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    for _ in range(5):
        a, b = box_close_env.step(np.full(4, 0.5)), other.step(np.full(4, 0.5))
        np.testing.assert_array_equal(a[0][STATE], b[0][STATE])
    placements = {tuple(box_close_env.reset(seed=s)[0][ENV_STATE]) for s in (7, 8, 9)}
    assert len(placements) == 3
    # unseeded resets continue each env's own stream: same seed, same sequence of placements
    box_close_env.reset(seed=3)
    other.reset(seed=3)
    np.testing.assert_array_equal(box_close_env.reset()[0][ENV_STATE], other.reset()[0][ENV_STATE])
    other.close()


def test_mujoco_instability_truncates_with_a_crash_flag(box_close_env):
    box_close_env.reset(seed=0)
    box_close_env.unwrapped.data.qvel[:] = 1e30  # MuJoCo resets a simulation with a huge velocity
    obs, reward, terminated, truncated, info = box_close_env.step(np.zeros(4))
    assert truncated and not terminated and reward == 0.0
    assert info["env_crashed"] and not info["is_success"]
    assert all(np.all(np.isfinite(v)) for v in obs.values())


def test_camera_observations(box_close_env):
    env = make_env("box_close", camera_names=("corner2",), camera_size=32, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    image = obs["observation.images.corner2"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.std() > 5
    assert env.render().shape == (256, 256, 3)
    env.close()


def test_sync_and_async_vector_envs():
    for asynchronous in (False, True):
        envs = make_vector_env("push_wall", num_envs=2, asynchronous=asynchronous)
        obs, _ = envs.reset(seed=[5, 5])
        np.testing.assert_array_equal(obs[ENV_STATE][0], obs[ENV_STATE][1])
        obs, reward, *_ = envs.step(np.zeros((2, 4), np.float32))
        assert obs[STATE].shape == (2, 9) and reward.shape == (2,)
        envs.close()


def test_clear_errors_for_unknown_tasks_and_missing_metaworld(monkeypatch):
    with pytest.raises(ValueError, match="box-close-v3"):
        get_task("door-open-v3")
    with pytest.raises(ValueError, match=r"supports \['box-close-v3', 'push-wall-v3'\]"):
        metaworld_env_class("door-open-v3")
    monkeypatch.setitem(sys.modules, "metaworld.env_dict", None)  # as if metaworld were not installed
    with pytest.raises(ImportError, match=r"metaworld==3\.1\.1"):
        metaworld_env_class("box-close-v3")


def test_generation_writes_both_formats_with_replayable_states(box_close_data):
    out, report = box_close_data
    assert {tier: s["demos"] for tier, s in report["tiers"].items()} == tier_counts(NUM_DEMOS, (0.5, 0.3, 0.2))
    assert report["fps"] == 80 and (out / "report.json").is_file()
    info = validate_robomimic_hdf5(out)
    assert set(info["obs_keys"]) == {"agent_pos", "object"}
    assert {"train", "valid", "expert", "noisy"} <= set(info["filter_keys"])
    env = make_env(env_meta=info["env_meta"])  # env_args rebuild the task
    assert env.unwrapped.task.name == "box_close"
    with h5py.File(out / "demo.hdf5", "r") as f:
        demo = f["data/demo_0"]
        states, agent_pos, objects = demo["states"][()], demo["obs/agent_pos"][()], demo["obs/object"][()]
        env.reset(seed=int(demo.attrs["seed"]))  # placement, then the stored simulator states
        for t in (0, len(states) // 2, len(states) - 1):
            obs = env.unwrapped.reset_to(states[t])
            np.testing.assert_allclose(obs[STATE], agent_pos[t], atol=1e-6)
            np.testing.assert_allclose(obs[ENV_STATE], objects[t], atol=1e-6)
    env.close()


def test_project_datamodules_and_lerobot_read_the_data(box_close_data):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from zprl.data.datamodule import LeRobotDataModule, RobomimicDataModule

    out, report = box_close_data
    robomimic = RobomimicDataModule(hdf5_path=str(out / "demo.hdf5"), state_keys=["agent_pos"],
                                    env_state_keys=["object"], n_obs_steps=1, horizon=8, batch_size=4)
    lerobot = LeRobotDataModule(repo_id=report["repo_id"], root=str(out / "lerobot"), task="box_close",
                                n_obs_steps=1, horizon=8, batch_size=4)
    for data in (robomimic, lerobot):
        data.setup("fit")
        assert data.spec.task == "box_close" and (data.spec.state_dim, data.spec.env_state_dim) == (9, 10)
        batch = next(iter(data.train_dataloader()))
        assert batch[STATE].shape == (4, 1, 9) and batch[ACTION].shape == (4, 8, 4)
    dataset = LeRobotDataset(report["repo_id"], root=out / "lerobot")
    assert dataset.num_episodes == NUM_DEMOS and dataset.num_frames == report["total_samples"]
    assert dataset.fps == 80


@pytest.mark.parametrize("task", TASKS)
def test_task_overlays_point_online_at_the_pretrain_export(task):
    policy = OmegaConf.merge(OmegaConf.load(ROOT / "conf/pretrain.yaml"),
                             OmegaConf.load(ROOT / f"conf/tasks/{task}_pretrain.yaml")).model.init_args.policy
    online = OmegaConf.load(ROOT / f"conf/tasks/{task}_online.yaml").model.init_args
    assert online.task == task
    assert online.policy_path == f"outputs/pretrain/{task}_{policy.head}_z{policy.z_dim}/policy"
    assert (policy.head, policy.n_action_steps, policy.flow_num_steps) == ("flow", 2, 5)


def _metrics(root: Path) -> dict[str, list[float]]:
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    return {key: [float(r[key]) for r in rows if r.get(key)] for key in rows[0]}


def test_tiny_pretrain_and_online_runs_on_box_close(box_close_data, tmp_path):
    from zprl.cli import lightning_main

    out, _ = box_close_data
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(textwrap.dedent(f"""\
        trainer:
          max_epochs: 1
          limit_train_batches: 4
          limit_val_batches: 0
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path / 'pretrain'}
          logger:
            class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {{save_dir: {tmp_path / 'pretrain'}}}
          callbacks:
            - class_path: zprl.evaluation_callback.RolloutEvalCallback
              init_args: {{every_n_epochs: 1, num_episodes: 1, max_episode_steps: 10}}
        model:
          init_args:
            export_dir: {tmp_path / 'policy'}
            policy: {{down_dims: [16, 32], vib_hidden_dim: 32}}
        data:
          init_args: {{hdf5_path: {out / 'demo.hdf5'}, batch_size: 8, num_workers: 0}}
        """))
    lightning_main(["fit", "-c", str(ROOT / "conf/pretrain.yaml"),
                    "-c", str(ROOT / "conf/tasks/box_close_pretrain.yaml"),
                    "-c", str(overlay)])
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert (config["head"], config["horizon"], config["n_obs_steps"], config["n_action_steps"]) == ("flow", 8, 1, 2)
    assert len(_metrics(tmp_path / "pretrain")["eval/success_rate"]) == 1

    lightning_main([
        "fit", "-c", str(ROOT / "conf/zprl_online.yaml"), "-c", str(ROOT / "conf/tasks/box_close_online.yaml"),
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'online'}",
        f"--trainer.default_root_dir={tmp_path / 'online'}", "--trainer.enable_progress_bar=false",
        f"--model.init_args.policy_path={tmp_path / 'policy'}", "--model.init_args.num_envs=2",
        "--model.init_args.asynchronous=false", "--model.init_args.max_episode_steps=20",
        "--model.init_args.total_env_steps=64", "--model.init_args.env_steps_per_iter=32",
        "--model.init_args.warmup_transitions=8", "--model.init_args.buffer_capacity=200",
        "--model.init_args.eval_every_env_steps=64", "--model.init_args.eval_episodes=2",
        "--model.init_args.sac.batch_size=8", "--model.init_args.sac.hidden_dims=[32, 32]",
    ])
    metrics = _metrics(tmp_path / "online")
    assert len(metrics["eval/success_rate"]) == 2 and max(metrics["env_steps"]) >= 64


def test_gymnasium_checker_accepts_the_env():
    from gymnasium.utils.env_checker import check_env

    env = make_env("push_wall").unwrapped
    check_env(env, skip_render_check=True)
    assert isinstance(env.observation_space, gym.spaces.Dict)
    env.close()
