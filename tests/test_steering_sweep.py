"""benchmarks/steering_sweep.py: per-method grids become distinct overlays; the best bound is picked by AUC."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
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


def best_table() -> pd.DataFrame:
    return pd.DataFrame({"base_method": ["zprl", "action_residual", "noise_steering"], "bound": [0.4, 0.05, 1.0],
                         "auc": [0.5, 0.4, 0.3], "final_success_mean": [0.5, 0.4, 0.3]})


def test_final_overlays_hold_each_best_bound_the_bases_and_the_ablations_own_policy(sweep, tmp_path):
    paths = sweep.write_final_overlays(best_table(), tmp_path, policy="pol/vib", no_bottleneck_policy="pol/raw")
    configs = {method_name(p): OmegaConf.load(p).model.init_args for p in paths}
    assert list(configs) == ["base_policy", "base_policy_raw", "zprl", "action_residual", "noise_steering",
                             "zprl_no_bottleneck"]
    assert configs["base_policy_raw"].base_conditioning == "raw"
    assert (configs["zprl"].steering_scale, configs["action_residual"].steering_scale,
            configs["noise_steering"].steering_scale) == (0.4, 0.05, 1.0)
    assert all(configs[name].policy_path == "pol/vib" for name in list(configs)[:5])
    ablation = configs["zprl_no_bottleneck"]
    assert (ablation.policy_path, ablation.steering_scale, ablation.steering) == ("pol/raw", 0.4, "latent")
    # without a no-bottleneck policy the ablation steers the raw embedding of the same policy
    others = sweep.write_final_overlays(best_table(), tmp_path, policy="pol/other")
    raw = OmegaConf.load(others[-1]).model.init_args
    assert (method_name(others[-1]), raw.base_conditioning, raw.policy_path, raw.steering_scale) == (
        "zprl_raw", "raw", "pol/other", 0.4)
    # other policies are another comparison: other overlay paths (zprl compare keys on paths)
    assert len(others) == 6 and not set(others) & set(paths)
    assert sweep.write_final_overlays(best_table(), tmp_path, policy="pol/other") == others
    assert method_name(sweep.write_final_overlays(best_table().iloc[1:], tmp_path)[-1]) == "noise_steering"


def test_phases_reject_reporting_on_the_tuning_seed_and_a_lost_ablation_policy(sweep, tmp_path):
    sweep.check_phases(0, [1, 2, 3], "pol/vib", "pol/raw", ["--model.init_args.num_envs=2"])
    sweep.check_phases(0, [1, 2, 3], None, None, ["--model.init_args.policy_path=pol/vib"])
    with pytest.raises(ValueError, match="tuning seed 0"):
        sweep.check_phases(0, [0, 1, 2], None, None, [])
    with pytest.raises(ValueError, match="add --final-seeds"):
        sweep.check_phases(0, [], None, "pol/raw", [])
    with pytest.raises(ValueError, match="--policy instead"):
        sweep.check_phases(0, [1], None, "pol/raw", ["--model.init_args.policy_path=pol/vib"])
    with pytest.raises(ValueError, match="given twice"):
        sweep.check_phases(0, [], "pol/vib", None, ["--model.init_args.policy_path=pol/vib"])
    with pytest.raises(ValueError, match="keep zprl"):
        sweep.write_final_overlays(best_table().iloc[1:], tmp_path, no_bottleneck_policy="pol/raw")
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_main_runs_the_sweep_then_the_final_phase_on_other_seeds(sweep, tmp_path, monkeypatch):
    """The two phases' arguments (the comparisons themselves run end to end in test_compare.py)."""
    calls = []

    def record(configs, **kwargs):
        calls.append((configs, kwargs))
        names = [method_name(c) for c in configs]
        return pd.DataFrame({"method": names, "auc": np.linspace(0.9, 0.1, len(names)),
                             "final_success_mean": 0.5})

    monkeypatch.setattr(sweep, "run_comparison", record)
    monkeypatch.setattr(sys, "argv", ["steering_sweep.py", "--task", "reach", "--experiment", "sw",
                                      "--output-dir", str(tmp_path), "--policy", "pol/vib", "--final-seeds", "1", "2",
                                      "--no-bottleneck-policy", "pol/raw", "--", "--model.init_args.num_envs=2"])
    sweep.main()
    (sweep_configs, sweep_kwargs), (final_configs, final_kwargs) = calls
    assert len(sweep_configs) == 9 and sweep_kwargs["seeds"] == [0] and sweep_kwargs["experiment"] == "sw"
    # the policy is the sweep's first override, as in a sweep started with it after --
    assert sweep_kwargs["overrides"] == ["--model.init_args.policy_path=pol/vib", "--model.init_args.num_envs=2"]
    assert final_kwargs["seeds"] == [1, 2] and final_kwargs["experiment"] == "sw-final"
    assert final_kwargs["overrides"] == ["--model.init_args.num_envs=2"]  # policies live in the overlays
    assert Path(final_kwargs["output_dir"]) == tmp_path / "final"
    bounds = {method_name(c): OmegaConf.load(c).model.init_args.get("steering_scale") for c in final_configs}
    # round-robin order: the first three overlays (the authors' bounds) got the highest AUCs
    assert bounds == {"base_policy": None, "base_policy_raw": None, "zprl": 0.2, "action_residual": 0.1,
                      "noise_steering": 1.5, "zprl_no_bottleneck": 0.2}


def test_best_skips_the_sweep_and_runs_only_the_final_phase_at_the_given_bounds(sweep, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "run_comparison", lambda configs, **kwargs: calls.append((configs, kwargs)))
    monkeypatch.setattr(sys, "argv", ["steering_sweep.py", "--output-dir", str(tmp_path), "--policy", "pol/vib",
                                      "--final-seeds", "1", "--best", "zprl=0.4", "action_residual=0.1"])
    sweep.main()
    [(configs, kwargs)] = calls
    assert kwargs["seeds"] == [1] and Path(kwargs["output_dir"]) == tmp_path / "final"
    bounds = {method_name(c): OmegaConf.load(c).model.init_args.get("steering_scale") for c in configs}
    assert bounds == {"base_policy": None, "base_policy_raw": None, "zprl": 0.4, "action_residual": 0.1,
                      "zprl_raw": 0.4}
    with pytest.raises(ValueError, match="one bound per method"):
        sweep.recorded_best(["zprl=0.2,0.4"])
    for extra in (["--final-seeds", "1", "--grid", "zprl=0.1"], []):  # --best replaces the sweep's grid only
        monkeypatch.setattr(sys, "argv", ["steering_sweep.py", "--best", "zprl=0.4", *extra])
        with pytest.raises(SystemExit):
            sweep.main()
    assert len(calls) == 1
