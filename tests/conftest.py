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
