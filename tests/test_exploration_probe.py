"""benchmarks/exploration_probe.py: what it measures on a real PointReach rollout of a trained policy."""

from __future__ import annotations

import numpy as np
import pytest

from zprl.envs import make_vector_env
from zprl.online.steering import make_steering
from zprl.policy_io import env_kwargs_for, load_policy


@pytest.fixture(scope="module")
def probe(load_benchmark):
    return load_benchmark("exploration_probe")


def measure(probe, frozen, steering, zero: bool):
    envs = make_vector_env("reach", 2, asynchronous=False, max_episode_steps=12, **env_kwargs_for(frozen[0].config))
    try:
        actor = probe.RandomActor(steering.rl_action_dim, seed=5, zero=zero)
        return probe.rollout(frozen, steering, actor, envs, episodes=2, seed=5)[1]
    finally:
        envs.close()


def test_the_base_row_is_undisplaced_and_a_fresh_noise_draw_is_not(probe, tiny_reach_policy):
    frozen = load_policy(tiny_reach_policy)
    latent = make_steering("latent", frozen[0], 1.0, conditioning="latent", latent_centre="mean")
    base = measure(probe, frozen, latent, zero=True)
    assert base.chunks and np.allclose(base.displacement, 0.0)
    # The reference draw must be independent of the agent's own noise stream (same seed): it moves the actions.
    assert min(base.noise_displacement) > 0.0


def test_a_latent_residual_moves_the_executed_chunks(probe, tiny_reach_policy):
    frozen = load_policy(tiny_reach_policy)
    latent = make_steering("latent", frozen[0], 1.0, conditioning="latent", latent_centre="mean")
    steered = measure(probe, frozen, latent, zero=False)
    assert np.mean(steered.displacement) > 0.0
    assert steered.chunks[0].shape[1] == frozen[0].config.n_action_steps * 2  # PointReach: 2-D actions
