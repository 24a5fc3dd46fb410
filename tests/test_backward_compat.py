"""Backward compatibility: a policy exported by an earlier zprl still loads and acts the same.

As LeRobot's ``tests/artifacts``: ``tests/artifacts/tiny_policy`` is a tiny ZPRL policy exported once (config.json,
model.safetensors, processor files) and ``tests/artifacts/expected_action.safetensors`` holds a fixed observation,
the generator noise and the action the policy took. A failure means that exported policies no longer load or no
longer act the same: fix the regression, or, for a deliberate format change, rerun
``tests/artifacts/make_artifacts.py`` and say so in the commit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from zprl.policy_io import load_policy

ARTIFACTS = Path(__file__).parent / "artifacts"
POLICY = ARTIFACTS / "tiny_policy"
EXPECTED = ARTIFACTS / "expected_action.safetensors"
OBSERVATION_KEYS = ("observation.state", "observation.environment_state")


def act(policy, preprocessor, postprocessor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first action (unnormalised) the policy takes from a fresh start on ``inputs``' observation and noise."""
    policy.reset()
    with torch.no_grad():
        batch = preprocessor({key: inputs[key] for key in OBSERVATION_KEYS})
        return postprocessor(policy.select_action(batch, noise=inputs["noise"]))


def test_zprl_loader_reads_the_artifact_and_acts_the_same():
    expected = load_file(EXPECTED)
    policy, preprocessor, postprocessor = load_policy(POLICY)
    torch.testing.assert_close(act(policy, preprocessor, postprocessor, expected), expected["action"],
                               rtol=1e-5, atol=1e-4)


def test_lerobots_loader_reads_the_artifact_and_acts_the_same():
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    expected = load_file(EXPECTED)
    policy = get_policy_class("zprl").from_pretrained(POLICY).eval()
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(POLICY))
    torch.testing.assert_close(act(policy, preprocessor, postprocessor, expected), expected["action"],
                               rtol=1e-5, atol=1e-4)
