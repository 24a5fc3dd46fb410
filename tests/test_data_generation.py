"""Scripted demonstration data: expert quality, robomimic HDF5 / LeRobot round trips, replay, clear errors."""

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # reloading a local LeRobot dataset must not need the hub

import h5py
import numpy as np
import pytest

from zprl.data.experts import OPERATOR_PROFILES, TIER_IDS, make_operator
from zprl.data.generate import attempt_seed, generate_dataset, rollout
from zprl.data.robomimic_writer import validate_robomimic_hdf5
from zprl.data.schema import QUALITY_TIERS
from zprl.envs import make_env
from zprl.envs.robomimic_env import STATE_KEYS

LOW_DIM_KEYS = [*STATE_KEYS, "object", "robot0_joint_pos"]
NUM_DEMOS = 4
SEQ_LENGTH = 10


@pytest.fixture(scope="module")
def lift_env():
    env = make_env("lift")
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "lift_tiny"
    report = generate_dataset("lift", NUM_DEMOS, out, seed=0, progress=False)
    return out, report


@pytest.fixture(scope="module")
def hdf5_demos(lift_dataset):
    """Everything written to demo.hdf5, per demo, read back with plain h5py."""
    out, _ = lift_dataset
    with h5py.File(out / "demo.hdf5", "r") as f:
        demos = sorted(f["data"], key=lambda name: int(name[5:]))
        return {name: {"obs": {k: f[f"data/{name}/obs/{k}"][()] for k in f[f"data/{name}/obs"]},
                       **{k: f[f"data/{name}/{k}"][()] for k in ("actions", "rewards", "dones", "states")},
                       "model_file": f[f"data/{name}"].attrs["model_file"]}
                for name in demos}


def test_lift_expert_succeeds_on_ten_seeds(lift_env):
    operator = make_operator(lift_env.unwrapped, "lift", "expert")
    successes = [rollout(lift_env, operator, seed).success for seed in range(10)]
    assert np.mean(successes) >= 0.9, successes


def test_every_operator_suite_plays_the_schema_tiers():
    from zprl.data.metaworld_experts import METAWORLD_OPERATOR_PROFILES

    assert list(OPERATOR_PROFILES) == list(METAWORLD_OPERATOR_PROFILES) == list(QUALITY_TIERS)
    assert TIER_IDS == {"expert": 0, "noisy": 1, "poor": 2}  # the LeRobot quality_tier column


def test_report_counts_tiers_and_attempts(lift_dataset):
    out, report = lift_dataset
    assert {tier: stats["demos"] for tier, stats in report["tiers"].items()} == {"expert": 2, "noisy": 1, "poor": 1}
    for stats in report["tiers"].values():
        assert stats["attempts"] >= stats["demos"]
        assert 0 < stats["success_rate"] <= 1
    assert (out / "report.json").is_file()


def test_hdf5_is_a_robomimic_dataset(lift_dataset, hdf5_demos):
    import robomimic.utils.file_utils as FileUtils

    out, report = lift_dataset
    info = validate_robomimic_hdf5(out / "demo.hdf5")
    assert validate_robomimic_hdf5(out)["path"] == info["path"] == out / "demo.hdf5"  # a dataset folder works too
    assert info["env_meta"] == FileUtils.get_env_metadata_from_dataset(str(out / "demo.hdf5"))
    assert info["env_meta"]["env_name"] == "Lift"
    assert info["demos"] == [f"demo_{i}" for i in range(NUM_DEMOS)]
    assert set(LOW_DIM_KEYS) <= set(info["obs_keys"])
    masks = info["filter_keys"]
    assert {"expert", "noisy", "poor", "train", "valid"} <= set(masks)
    assert sorted(masks["train"] + masks["valid"]) == sorted(info["demos"])
    assert len(masks["valid"]) == 1
    assert masks["expert"] == ["demo_0", "demo_1"] and masks["noisy"] == ["demo_2"] and masks["poor"] == ["demo_3"]
    with h5py.File(out / "demo.hdf5", "r") as f:
        total = sum(len(d["actions"]) for d in hdf5_demos.values())
        assert f["data"].attrs["total"] == report["total_samples"] == total
        for name, demo in hdf5_demos.items():
            assert f[f"data/{name}"].attrs["num_samples"] == len(demo["actions"])
            assert demo["dones"][-1] == 1 and demo["rewards"][-1] == 1.0 and demo["rewards"][:-1].sum() == 0
            assert np.array_equal(f[f"data/{name}/next_obs/object"][:-1], demo["obs"]["object"][1:])

    # robomimic's own dataset report script runs on it (and checks actions are in [-1, 1])
    result = subprocess.run([sys.executable, "-m", "robomimic.scripts.get_dataset_info", "--dataset",
                             str(out / "demo.hdf5")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"total trajectories: {NUM_DEMOS}" in result.stdout


def test_written_demo_is_reproducible_from_its_seed(lift_env, lift_dataset, hdf5_demos):
    # the only poor demo (demo_3) is the poor operator's last attempt; its noise, pauses, drift and missed
    # grasp all come from the attempt seed
    out, report = lift_dataset
    seed = attempt_seed(0, "poor", report["tiers"]["poor"]["attempts"] - 1)
    with h5py.File(out / "demo.hdf5", "r") as f:
        assert f["data/demo_3"].attrs["seed"] == seed and f["data/demo_3"].attrs["quality_tier"] == "poor"
    episode = rollout(lift_env, make_operator(lift_env.unwrapped, "lift", "poor"), seed)
    assert episode.success
    assert np.array_equal(episode.actions, hdf5_demos["demo_3"]["actions"])
    assert np.array_equal(episode.states, hdf5_demos["demo_3"]["states"])


def test_robomimic_sequence_dataset_reads_what_was_written(lift_dataset, hdf5_demos):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    out, _ = lift_dataset
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": LOW_DIM_KEYS, "rgb": []}})
    dataset = SequenceDataset(str(out / "demo.hdf5"), obs_keys=LOW_DIM_KEYS,
                              dataset_keys=("actions", "rewards", "dones"),
                              seq_length=SEQ_LENGTH, pad_seq_length=True, hdf5_cache_mode="all",
                              filter_by_attribute=None)
    assert len(dataset) == sum(len(d["actions"]) for d in hdf5_demos.values())
    start = 0
    for name, demo in hdf5_demos.items():
        length = len(demo["actions"])
        assert dataset._demo_id_to_start_indices[name] == start and dataset._demo_id_to_demo_length[name] == length
        first, last = dataset[start], dataset[start + length - 1]
        np.testing.assert_array_equal(first["actions"], demo["actions"][:SEQ_LENGTH])
        for key in LOW_DIM_KEYS:
            np.testing.assert_array_equal(first["obs"][key], demo["obs"][key][:SEQ_LENGTH])
        # the sequence starting at the last step is padded with that step, never with the next demo
        np.testing.assert_array_equal(last["actions"], np.repeat(demo["actions"][-1:], SEQ_LENGTH, axis=0))
        start += length


def test_lerobot_dataset_reloads_with_identical_frames(lift_dataset, hdf5_demos):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out, report = lift_dataset
    dataset = LeRobotDataset(report["repo_id"], root=out / "lerobot", video_backend="pyav")
    assert dataset.num_episodes == NUM_DEMOS and dataset.fps == 20
    frames = dataset.hf_dataset.with_format("numpy")[:]
    tiers = {"demo_0": "expert", "demo_1": "expert", "demo_2": "noisy", "demo_3": "poor"}
    start = 0
    for episode_index, (name, demo) in enumerate(hdf5_demos.items()):
        length = len(demo["actions"])
        episode = dataset.meta.episodes[episode_index]
        assert (episode["dataset_from_index"], episode["dataset_to_index"]) == (start, start + length)
        rows = slice(start, start + length)
        assert (frames["episode_index"][rows] == episode_index).all()
        np.testing.assert_array_equal(frames["action"][rows], demo["actions"].astype(np.float32))
        state = np.concatenate([demo["obs"][k] for k in STATE_KEYS], axis=1).astype(np.float32)
        np.testing.assert_array_equal(frames["observation.state"][rows], state)
        np.testing.assert_array_equal(frames["observation.environment_state"][rows],
                                      demo["obs"]["object"].astype(np.float32))
        assert (frames["quality_tier"][rows] == TIER_IDS[tiers[name]]).all()
        assert frames["next.done"][rows].ravel().tolist() == [False] * (length - 1) + [True]
        assert bool(frames["next.success"][rows][-1])
        start += length
    item = dataset[3]
    assert item["task"] == "Lift the red cube off the table." and item["action"].shape == (7,)


def test_hdf5_states_replay_observations(lift_dataset, hdf5_demos):
    out, _ = lift_dataset
    env = make_env(env_meta=validate_robomimic_hdf5(out)["env_meta"])  # the env recorded in the dataset
    demo = hdf5_demos["demo_2"]
    base = env.unwrapped
    base.reset_to({"model": demo["model_file"], "states": demo["states"][0]})
    # the xml in model_file rounds the model's constants, hence a 1e-6 tolerance rather than bit equality
    for t in range(0, len(demo["actions"]), 7):
        base.reset_to({"states": demo["states"][t]})
        for key in LOW_DIM_KEYS:
            np.testing.assert_allclose(base.last_raw_obs[key], demo["obs"][key][t], rtol=0, atol=1e-6, err_msg=key)
    env.close()


def test_bad_task_and_demo_count_fail_fast(tmp_path):
    tasks = r"\['box_close', 'can', 'lift', 'push_wall', 'reach', 'square'\]"
    with pytest.raises(ValueError, match=rf"Choose one of {tasks}"):
        generate_dataset("stack", 2, tmp_path / "a")
    with pytest.raises(ValueError, match="lerobot/pusht"):
        generate_dataset("pusht", 2, tmp_path / "a")
    with pytest.raises(ValueError, match="num_demos must be >= 1"):
        generate_dataset("lift", 0, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_out_dir_errors_name_the_fix(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="Pass another --out.*--overwrite"):
        generate_dataset("lift", 1, taken)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="Pass another --out"):
        generate_dataset("lift", 1, blocker / "sub")


def test_validate_robomimic_hdf5_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="zprl data generate --task lift --demos 100 --out data/lift_mh"):
        validate_robomimic_hdf5(tmp_path / "missing.hdf5")
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(b"this is not hdf5" * 64)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        validate_robomimic_hdf5(corrupt)
    no_data = tmp_path / "no_data.hdf5"
    with h5py.File(no_data, "w") as f:
        f.create_group("mask")
    with pytest.raises(ValueError, match="no 'data' group"):
        validate_robomimic_hdf5(no_data)


def test_camera_images_round_trip(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    report = generate_dataset("lift", 1, tmp_path / "cam", tier_fractions=(1, 0, 0), camera_names=("agentview",),
                              camera_size=16, progress=False)
    with h5py.File(tmp_path / "cam" / "demo.hdf5", "r") as f:
        images = f["data/demo_0/obs/agentview_image"][()]
    assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3) and images.std() > 0
    dataset = LeRobotDataset(report["repo_id"], root=tmp_path / "cam" / "lerobot", video_backend="pyav")
    for t in (0, len(images) - 1):
        chw = dataset[t]["observation.images.agentview"].numpy()  # float CHW in [0, 1]
        np.testing.assert_array_equal(np.round(chw * 255).astype(np.uint8).transpose(1, 2, 0), images[t])


def test_reach_command_writes_a_biased_lerobot_dataset_and_guards_it(tmp_path, capsys):
    from zprl.cli import zprl_main
    from zprl.data.lerobot_source import load_lerobot_metadata

    out = tmp_path / "reach"
    zprl_main(["data", "generate", "--task", "reach", "--demos", "3", "--out", str(out), "--bias", "0.2", "0.0"])
    assert load_lerobot_metadata("zprl/reach_biased", root=out).total_episodes == 3
    with pytest.raises(FileExistsError, match="--overwrite"):
        zprl_main(["data", "generate", "--task", "reach", "--demos", "2", "--out", str(out)])
    zprl_main(["data", "generate", "--task", "reach", "--demos", "2", "--out", str(out), "--overwrite"])
    assert load_lerobot_metadata("zprl/reach_biased", root=out).total_episodes == 2
    with pytest.raises(ValueError, match=r"'lift' takes no generator option 'bias' \(--bias, an option of \['reach'\]"):
        zprl_main(["data", "generate", "--task", "lift", "--out", str(tmp_path / "lift"), "--bias", "0.2", "0.0"])
    assert not (tmp_path / "lift").exists()
