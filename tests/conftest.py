"""Shared fixtures: small real datasets generated once per test session."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # 2-core CI: OpenMP spinning across busy cores is 10-100x slower


@pytest.fixture(scope="session")
def load_benchmark():
    """Imports a script of ``benchmarks/`` (not a package) as a module: ``load_benchmark("steering_sweep")``."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_lift_dataset(tmp_path_factory):
    """Six scripted Lift demos (all quality tiers) in robomimic HDF5 + LeRobot formats."""
    from zprl.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / "lift_tiny"
    generate_dataset("lift", 6, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_reach_policy(tmp_path_factory):
    """The biased PointReach policy of conf/pretrain_reach.yaml (LeRobot export folder), trained once.

    40 demos of an operator aiming 0.1 beside the goal, 1500 steps of a tiny flow-head ZPRL policy (~50 s):
    its VIB latent encodes the goal and it inherits the bias, succeeding in about a third of the episodes.
    """
    from zprl.cli import lightning_main
    from zprl.data.reach_demos import generate_reach_dataset

    root = tmp_path_factory.mktemp("reach")
    generate_reach_dataset(40, root / "data", bias=(0.1, 0.0))
    lightning_main(["fit", "-c", str(ROOT / "conf/pretrain_reach.yaml"), "--trainer.logger=false",
                    "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
                    f"--trainer.default_root_dir={root}", f"--data.init_args.root={root / 'data'}",
                    f"--model.init_args.export_dir={root / 'policy'}"])
    return root / "policy"


TINY_PUSHT_POLICY = {"down_dims": (16, 32), "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
                     "vib_hidden_dim": 32, "z_dim": 4, "num_inference_steps": 3, "device": "cpu"}


def range_stats(low, high) -> dict[str, np.ndarray]:
    """LeRobot-format statistics of a feature spread uniformly over [low, high]."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return {"min": low, "max": high, "mean": (low + high) / 2, "std": (high - low) / 4}


def save_tiny_pusht_policy(out: Path, **overrides) -> Path:
    """Save a tiny untrained ZPRL policy for PushT (state 2, env state 16, action 2) with its processors to ``out``.

    ``overrides`` change ZPRLConfig fields of :data:`TINY_PUSHT_POLICY`. Also writes the backward-compatibility
    artifact (tests/artifacts/make_artifacts.py).
    """
    from zprl.policy import ZPRLPolicy, make_zprl_pre_post_processors, zprl_config_for

    torch.manual_seed(0)
    config = zprl_config_for(2, 16, 2, **{**TINY_PUSHT_POLICY, **overrides})
    stats = {"observation.state": range_stats([0, 0], [512, 512]),
             "observation.environment_state": range_stats([0] * 16, [512] * 16),
             "action": range_stats([0, 0], [512, 512])}
    pre, post = make_zprl_pre_post_processors(config, stats)
    for part in (ZPRLPolicy(config), pre, post):
        part.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A tiny untrained ZPRL policy for PushT (see :func:`save_tiny_pusht_policy`)."""
    return save_tiny_pusht_policy(tmp_path_factory.mktemp("policy"))
