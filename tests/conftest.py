"""Shared fixtures: small real datasets generated once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # 2-core CI: OpenMP spinning across busy cores is 10-100x slower


@pytest.fixture(scope="session")
def tiny_lift_dataset(tmp_path_factory):
    """Six scripted Lift demos (all quality tiers) in robomimic HDF5 + LeRobot formats."""
    from zprl.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / "lift_tiny"
    generate_dataset("lift", 6, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_reach_policy(tmp_path_factory):
    """A tiny flow-head ZPRL policy pretrained on PointReach demos of an operator aiming 0.1 beside the goal.

    1500 steps (~50 s) are what it takes for the VIB latent to encode the goal (shorter runs leave the
    posterior at the prior and the policy blind to the goal); the policy then inherits the aiming bias
    and succeeds in about a third of the episodes. LeRobot export folder.
    """
    import lightning as L

    from zprl.data.datamodule import LeRobotDataModule
    from zprl.data.reach_demos import generate_reach_dataset
    from zprl.pretrain import PretrainModule

    root = tmp_path_factory.mktemp("reach")
    generate_reach_dataset(40, root / "data", bias=(0.1, 0.0))
    L.seed_everything(0)
    data = LeRobotDataModule(repo_id="zprl/reach_biased", root=str(root / "data"), task="reach", n_obs_steps=2,
                             horizon=8, batch_size=64, val_fraction=0.0, cache_in_memory=True)
    module = PretrainModule(head="flow", z_dim=4, beta=1e-4, n_action_steps=4, lr=3e-3, warmup_steps=10,
                            policy_overrides={"down_dims": [16, 32], "vib_hidden_dim": 32, "flow_num_steps": 3},
                            export_dir=str(root / "policy"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, max_steps=1500).fit(module, datamodule=data)
    return root / "policy"
