"""Latent-space analysis of a ZPRL run: bottleneck latents visited by base and steered rollouts."""

from __future__ import annotations

import numpy as np
import torch

from zprl.envs import make_vector_env
from zprl.evaluation import ANALYSIS_SEED_OFFSET, Evaluator
from zprl.online.collector import SteeredAgent, SteeredRolloutPolicy
from zprl.online.steering import LatentSteering


class RecordingLatentSteering(LatentSteering):
    """Latent steering that also records every latent it decodes (z' = mu + lambda * u at evaluation)."""

    def __init__(self, steering: LatentSteering):
        super().__init__(steering.policy, steering.scale, steering.conditioning, steering.centre)
        self.latents: list[np.ndarray] = []

    @torch.no_grad()
    def act(self, ctx, u):
        self.latents.append(self.steered_latent(ctx, u).float().cpu().numpy())
        return super().act(ctx, u)


def rollout_latents(module, num_episodes: int = 10, num_envs: int = 2,
                    seed: int = ANALYSIS_SEED_OFFSET) -> dict[str, np.ndarray]:
    """Latents decoded during ``num_episodes`` base rollouts (u = 0) and steered rollouts (actor mean).

    ``module`` is a trained ``OnlineRLModule`` with latent steering (e.g. from ``load_from_checkpoint``).
    Returns ``{"base": (N, z_dim), "steered": (M, z_dim), "base_success": float, "steered_success": float}``.
    """
    if not isinstance(module.steering, LatentSteering):
        raise ValueError(f"Latent analysis needs a latent-steering run, got steering={module.hparams.steering!r}.")
    envs = make_vector_env(module.hparams.task, num_envs, asynchronous=False, **module.env_kwargs())
    out = {}
    try:
        for name, actor in (("base", _ZeroActor(module.action_dim)), ("steered", module.sac.actor)):
            steering = RecordingLatentSteering(module.steering)
            agent = SteeredAgent(*module.frozen, steering, num_envs, seed=seed,
                                 generator_noise=module.hparams.generator_noise)
            policy = SteeredRolloutPolicy(agent, actor)
            result = Evaluator(envs, num_episodes, seed=seed, progress=False).evaluate(policy)
            out[name] = np.concatenate(steering.latents)
            out[f"{name}_success"] = result.success_rate
    finally:
        envs.close()
    return out


class _ZeroActor:
    """An actor whose deterministic action is always 0 (the residual of the base policy)."""

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    def deterministic(self, rl_obs: torch.Tensor) -> torch.Tensor:
        return rl_obs.new_zeros(len(rl_obs), self.action_dim)


def pca_2d(*arrays: np.ndarray) -> list[np.ndarray]:
    """Project several (N_i, D) arrays onto the first two principal components of their union."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(np.concatenate(arrays))
    return [pca.transform(a) for a in arrays]


def umap_2d(*arrays: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> list[np.ndarray]:
    """Embed several (N_i, D) arrays jointly in 2-D with UMAP (umap-learn), one fit on their union.

    Unlike :func:`pca_2d` this keeps local neighbourhoods rather than the directions of largest variance:
    steered latents that leave the base manifold show up as separate clusters.
    """
    import umap

    union = np.concatenate(arrays)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(union) - 1), random_state=seed)
    embedded = reducer.fit_transform(union)
    return np.split(embedded, np.cumsum([len(a) for a in arrays])[:-1])
