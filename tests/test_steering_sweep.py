"""benchmarks/steering_sweep.py: per-method grids become distinct overlays; the best bound is picked by AUC."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from omegaconf import OmegaConf

from zprl.online.compare import method_name


@pytest.fixture(scope="module")
def sweep(load_benchmark):
    return load_benchmark("steering_sweep")


def test_overlays_set_each_methods_bound_and_a_distinct_name(sweep, tmp_path):
    grids = {**sweep.GRIDS, **sweep.parse_grid(["zprl=0.5,1"])}
    paths = sweep.write_overlays(grids, tmp_path)
    assert len(paths) == 2 + 3 + 3
    names = [method_name(p) for p in paths]
    # round-robin, each grid in its order (the defaults start with the authors' value)
    assert names[:4] == ["zprl-0.5", "action_residual-0.1", "noise_steering-1.5", "zprl-1"]
    action = OmegaConf.load(paths[1]).model.init_args
    assert action.steering == "action" and action.steering_scale == 0.1 and action.action_schedule_fraction == 0.05
    assert os.path.basename(paths[-1]) == "noise_steering_2.yaml"
    with pytest.raises(ValueError, match="METHOD=V1"):
        sweep.parse_grid(["latent=0.1"])


def test_best_bound_by_auc_then_final_success(sweep):
    table = pd.DataFrame({"method": ["zprl-0.1", "zprl-0.2", "zprl-0.4", "action_residual-0.05",
                                     "action_residual-0.1"],
                          "auc": [0.3, 0.5, 0.4, 0.2, 0.2], "final_success_mean": [0.4, 0.6, 0.9, 0.3, 0.5]})
    best = sweep.best_per_method(table).set_index("base_method")
    assert best.loc["zprl", "bound"] == 0.2 and best.loc["action_residual", "bound"] == 0.1
