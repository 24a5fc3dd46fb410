"""robomimic and LeRobot DataModules: one batch schema, equal batches for equal episodes, clear errors."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from zprl.data.datamodule import LeRobotDataModule, RobomimicDataModule
from zprl.data.robomimic_writer import validate_robomimic_hdf5
from zprl.data.schema import (
    ACTION,
    ENV_STATE,
    QUALITY_TIERS,
    STATE,
    action_frame_offsets,
    observation_frame_offsets,
)
from zprl.data.selection import parse_filter_key, split_episodes

N_OBS, HORIZON = 2, 8


def _modules(root, **kwargs):
    robomimic = RobomimicDataModule(hdf5_path=str(root / "demo.hdf5"), n_obs_steps=N_OBS, horizon=HORIZON,
                                    batch_size=16, val_fraction=0.0, **kwargs)
    lerobot = LeRobotDataModule(repo_id="zprl/lift_tiny", root=str(root / "lerobot"), n_obs_steps=N_OBS,
                                horizon=HORIZON, batch_size=16, val_fraction=0.0, task="lift")
    robomimic.setup("fit")
    lerobot.setup("fit")
    return robomimic, lerobot


def test_same_episodes_give_equal_batches(tiny_lift_dataset):
    robomimic, lerobot = _modules(tiny_lift_dataset)
    assert len(robomimic.train_set) == len(lerobot.train_set)
    for index in [0, 1, 5, len(robomimic.train_set) // 2, len(robomimic.train_set) - 1]:
        a, b = robomimic.train_set[index], lerobot.train_set[index]
        assert set(a) == set(b) == {STATE, ENV_STATE, ACTION, "action_is_pad"}
        assert a[STATE].shape == (N_OBS, 9) and a[ACTION].shape == (HORIZON, 7)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs at {index}")
    # The first sample of an episode pads the history at the start; the last pads the chunk at the end.
    assert robomimic.train_set[0]["action_is_pad"][0]
    assert robomimic.train_set[len(robomimic.train_set) - 1]["action_is_pad"][-1]
    assert robomimic.spec.state_dim == lerobot.spec.state_dim == 9
    assert robomimic.spec.env_state_dim == lerobot.spec.env_state_dim == 10
    assert robomimic.spec.task == lerobot.spec.task == "lift"
    for key in (STATE, ENV_STATE, ACTION):
        torch.testing.assert_close(torch.as_tensor(robomimic.stats[key]["mean"]),
                                   torch.as_tensor(lerobot.stats[key]["mean"]).float(), rtol=1e-4, atol=1e-4)
    batch = next(iter(robomimic.train_dataloader()))
    assert batch[STATE].shape == (16, N_OBS, 9) and batch["action_is_pad"].dtype == torch.bool


def test_lerobot_memory_cache_serves_identical_samples(tiny_lift_dataset):
    kwargs = {"repo_id": "zprl/lift_tiny", "root": str(tiny_lift_dataset / "lerobot"), "n_obs_steps": N_OBS,
                  "horizon": HORIZON, "val_fraction": 0.0}
    plain, cached = LeRobotDataModule(**kwargs), LeRobotDataModule(cache_in_memory=True, **kwargs)
    plain.setup("fit")
    cached.setup("fit")
    for index in (0, 7, len(plain.train_set) - 1):
        for key, value in plain.train_set[index].items():
            torch.testing.assert_close(cached.train_set[index][key], value, rtol=0, atol=0)


def test_filter_keys_select_tiers(tiny_lift_dataset):
    with h5py.File(tiny_lift_dataset / "demo.hdf5", "r") as f:
        expert = {d.decode() for d in f["mask/expert"][:]}
        noisy = {d.decode() for d in f["mask/noisy"][:]}
    module = RobomimicDataModule(hdf5_path=str(tiny_lift_dataset / "demo.hdf5"), filter_key="expert+noisy",
                                 n_obs_steps=N_OBS, horizon=HORIZON, val_fraction=0.0)
    module.setup("fit")
    assert set(module.train_set.demos) == expert | noisy
    lerobot = LeRobotDataModule(repo_id="zprl/lift_tiny", root=str(tiny_lift_dataset / "lerobot"),
                                quality_filter="expert+noisy", n_obs_steps=N_OBS, horizon=HORIZON, val_fraction=0.0)
    lerobot.setup("fit")
    assert len(lerobot.train_set) == len(module.train_set)
    with pytest.raises(ValueError, match="masks are"):
        RobomimicDataModule(hdf5_path=str(tiny_lift_dataset / "demo.hdf5"), filter_key="better").setup("fit")
    with pytest.raises(ValueError, match=r"'best'.*quality tiers are \['expert', 'noisy', 'poor'\]"):
        LeRobotDataModule(repo_id="zprl/lift_tiny", root=str(tiny_lift_dataset / "lerobot"),
                          quality_filter="expert+best").setup("fit")


def test_one_parser_for_filter_keys():
    assert parse_filter_key("expert+noisy+expert", QUALITY_TIERS, "quality tier", "the tiers") == ["expert", "noisy"]
    assert parse_filter_key(None, QUALITY_TIERS, "quality tier", "the tiers") is None
    assert parse_filter_key("", QUALITY_TIERS, "quality tier", "the tiers") is None
    with pytest.raises(ValueError, match=r"Unknown filter key 'noisy', '' in 'noisy\+': the masks are \['train'\]"):
        parse_filter_key("noisy+", ["train"], "filter key", "the masks")


def test_split_is_by_episode_and_deterministic():
    train, val = split_episodes(list(range(10)), 0.2, seed=3)
    assert len(val) == 2 and set(train).isdisjoint(val) and sorted(train + val) == list(range(10))
    assert train == sorted(train) and val == sorted(val)
    assert split_episodes(list(range(10)), 0.2, seed=3) == (train, val)
    assert split_episodes([0], 0.5, seed=0) == ([0], [])  # at least one episode trains
    assert len(split_episodes(list(range(4)), 0.1, seed=0)[1]) == 1  # asking for validation gets some
    assert split_episodes(list(range(4)), 0.0, seed=0) == (list(range(4)), [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(list(range(4)), 1.0, seed=0)


def test_the_writer_stores_the_split_rule_as_masks(tiny_lift_dataset):
    info = validate_robomimic_hdf5(tiny_lift_dataset / "demo.hdf5")
    train, valid = split_episodes(info["demos"], 0.1, seed=0)  # conftest generates with seed 0
    assert (info["filter_keys"]["train"], info["filter_keys"]["valid"]) == (train, valid)


def _with_masks(source, path, masks: dict[str, list[str]]):
    """A copy of the robomimic file ``source`` whose ``mask/<key>`` hold ``masks`` (None: no such mask)."""
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        for key, names in masks.items():
            del f[f"mask/{key}"]
            if names is not None:
                f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    return str(path)


def test_robomimic_file_masks_are_the_split(tiny_lift_dataset, tmp_path):
    valid = ["demo_1", "demo_4"]  # two demos: not what the writer's random split (one demo) chose
    train = ["demo_0", "demo_2", "demo_3", "demo_5"]
    path = _with_masks(tiny_lift_dataset / "demo.hdf5", tmp_path / "demo.hdf5", {"train": train, "valid": valid})
    module = RobomimicDataModule(hdf5_path=path, n_obs_steps=N_OBS, horizon=HORIZON)
    module.setup("fit")
    assert module.val_set.demos == valid and module.train_set.demos == train
    expert = RobomimicDataModule(hdf5_path=path, filter_key="expert", n_obs_steps=N_OBS, horizon=HORIZON)
    expert.setup("fit")  # the file's expert demos are demo_0..demo_2
    assert expert.val_set.demos == ["demo_1"] and expert.train_set.demos == ["demo_0", "demo_2"]
    everything = RobomimicDataModule(hdf5_path=path, n_obs_steps=N_OBS, horizon=HORIZON, val_fraction=0.0)
    everything.setup("fit")  # no validation: every demo trains, as robomimic without validate
    assert everything.val_set is None and len(everything.train_set.demos) == 6


def test_data_without_masks_is_split_by_the_rule(tiny_lift_dataset, tmp_path):
    path = _with_masks(tiny_lift_dataset / "demo.hdf5", tmp_path / "demo.hdf5", {"train": None, "valid": None})
    demos = validate_robomimic_hdf5(path)["demos"]
    robomimic = RobomimicDataModule(hdf5_path=path, n_obs_steps=N_OBS, horizon=HORIZON, val_fraction=0.34, seed=2)
    robomimic.setup("fit")
    assert (robomimic.train_set.demos, robomimic.val_set.demos) == split_episodes(demos, 0.34, seed=2)
    lerobot = LeRobotDataModule(repo_id="zprl/lift_tiny", root=str(tiny_lift_dataset / "lerobot"), n_obs_steps=N_OBS,
                                horizon=HORIZON, val_fraction=0.34, seed=2)
    lerobot.setup("fit")
    assert (lerobot.train_set.episodes, lerobot.val_set.episodes) == split_episodes(list(range(6)), 0.34, seed=2)


def test_bad_inputs_name_the_fix(tiny_lift_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="zprl data generate"):
        RobomimicDataModule(hdf5_path=str(tmp_path / "missing.hdf5")).setup("fit")
    with pytest.raises(KeyError, match="Available obs keys"):
        RobomimicDataModule(hdf5_path=str(tiny_lift_dataset / "demo.hdf5"), state_keys=["robot0_no_such_key"],
                            val_fraction=0.0).setup("fit")
    with pytest.raises(FileNotFoundError, match="zprl data generate"):
        LeRobotDataModule(root=str(tmp_path / "nothing")).setup("fit")
    with pytest.raises(KeyError, match="Available"):
        LeRobotDataModule(repo_id="zprl/lift_tiny", root=str(tiny_lift_dataset / "lerobot"),
                          state_key="observation.joints", val_fraction=0.0).setup("fit")


def test_robomimic_data_of_another_task_than_the_config_names_is_refused(tiny_lift_dataset):
    data = RobomimicDataModule(hdf5_path=str(tiny_lift_dataset / "demo.hdf5"), task="can", n_obs_steps=1, horizon=8)
    with pytest.raises(ValueError, match="--data.init_args.task=lift"):
        data.setup("fit")
    RobomimicDataModule(hdf5_path=str(tiny_lift_dataset / "demo.hdf5"), task="lift", n_obs_steps=1, horizon=8).setup()


@pytest.mark.parametrize(("n_obs_steps", "horizon"), [(1, 16), (2, 8), (2, 16)])
def test_frame_offsets_are_the_policy_configs_delta_indices(n_obs_steps, horizon):
    """The DataModule fixes its window before the policy config exists (the config is built from the data's
    spec), so schema restates LeRobot's ``*_delta_indices``; this pins the two together."""
    from zprl.policy import zprl_config_for

    config = zprl_config_for(2, 16, 2, n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=1, down_dims=(16, 32))
    assert observation_frame_offsets(n_obs_steps) == config.observation_delta_indices
    assert action_frame_offsets(n_obs_steps, horizon) == config.action_delta_indices
