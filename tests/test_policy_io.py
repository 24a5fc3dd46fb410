"""Loading exported policies, env/policy shape checks and the `zprl evaluate` command."""

from __future__ import annotations

import json

import pytest

from zprl.cli import zprl_main
from zprl.envs import make_env
from zprl.policy_io import check_policy_matches_env, env_kwargs_for, load_policy


def test_policy_env_mismatch_is_reported(tiny_reach_policy):
    policy, _, _ = load_policy(tiny_reach_policy)
    reach, pusht = make_env("reach"), make_env("pusht")
    check_policy_matches_env(policy.config, reach.observation_space, reach.action_space)
    with pytest.raises(ValueError, match="Shape mismatch for 'observation.environment_state'"):
        check_policy_matches_env(policy.config, pusht.observation_space, pusht.action_space)
    assert not policy.training and not any(p.requires_grad for p in policy.parameters())


def test_env_kwargs_give_an_image_policy_its_cameras():
    from zprl.policy import zprl_config_for

    state_only = zprl_config_for(9, 10, 7)
    assert env_kwargs_for(state_only) == {"camera_names": (), "camera_size": 84}
    image = zprl_config_for(9, 10, 7, camera_names=("agentview",), image_shape=(3, 64, 64))
    assert env_kwargs_for(image) == {"camera_names": ("agentview",), "camera_size": 64}
    env = make_env("lift", **env_kwargs_for(image))
    try:
        check_policy_matches_env(image, env.observation_space, env.action_space)
    finally:
        env.close()


def test_incomplete_export_names_what_is_missing(tiny_reach_policy, tmp_path):
    (tmp_path / "config.json").write_text((tiny_reach_policy / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="missing .*model.safetensors"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="expected a LeRobot-format folder or a .ckpt"):
        load_policy(tmp_path / "config.json")


def test_evaluate_command_prints_metrics(tiny_reach_policy, capsys):
    zprl_main(["evaluate", "--policy", str(tiny_reach_policy), "--task", "reach", "--episodes", "3",
               "--num-envs", "1", "--device", "cpu", "--no-mlflow"])
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):out.index("}") + 1])
    assert metrics["num_episodes"] == 3
    assert 0.0 <= metrics["success_rate"] <= 1.0 and metrics["mean_length"] > 0
    assert {"jerk", "action_delta", "mean_return", "env_crashes"} <= set(metrics)
