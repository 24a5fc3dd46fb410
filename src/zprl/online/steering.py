"""How the RL actor's output u in (-1, 1)^d steers the frozen base policy, one action chunk at a time.

Every steering turns a NORMALISED observation batch into an RL observation (:meth:`Steering.observe`)
and the actor's u into a NORMALISED (B, horizon, action_dim) chunk (:meth:`Steering.act`), with a
perturbation bounded elementwise by ``scale``:

- ``latent`` (ZPRL): z' = mu(e) + scale * u, chunk = generate(decode(z'), noise). On a policy trained
  with ``bottleneck=False`` (mu = e, identity decode) the same steering is the no-bottleneck ablation:
  it perturbs the un-bottlenecked embedding e directly.
- ``action`` (Policy Decorator / ResiP): a' = a + scale * u on the executable part of the base chunk,
  applied to a chunk with probability min(1, env_steps / schedule_steps) during collection.
- ``noise`` (DSRL): the actor picks the generator's initial noise, noise = scale * u.
- ``none``: the base policy, no learning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lerobot.configs.types import NormalizationMode
from torch import Tensor

from zprl.policy import ZPRLPolicy
from zprl.policy.modeling_zprl import LatentEncoding


@dataclass
class SteeringContext:
    """What a steering computed from an observation batch: the RL observation and what ``act`` reuses."""

    rl_obs: Tensor  # (B, rl_obs_dim), detached
    latent: LatentEncoding
    noise: Tensor  # (B, horizon, action_dim) base generator noise
    base_chunk: Tensor | None = None  # (B, horizon, action_dim), action steering only


class Steering:
    """Base class: RL observation = e, and ``act`` with u = 0 gives the base chunk generate(decode(mu), noise)."""

    name = ""
    trainable = True  # False: nothing to learn, the collector runs the base policy

    def __init__(self, scale: float = 1.0):
        if scale < 0:
            raise ValueError(f"The steering scale must be >= 0, got {scale}.")
        self.scale = scale

    def rl_obs_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.cond_dim

    def rl_action_dim(self, policy: ZPRLPolicy) -> int:
        raise NotImplementedError

    def residual_probability(self, env_steps: int) -> float:
        """Probability that a collected chunk is perturbed (1 unless there is an exploration schedule)."""
        return 1.0

    @torch.no_grad()
    def observe(self, policy: ZPRLPolicy, norm_batch: dict[str, Tensor], noise: Tensor) -> SteeringContext:
        """Encode a normalised observation batch; ``noise`` is the base generator noise for this chunk."""
        latent = policy.encode_latent(norm_batch)
        return SteeringContext(rl_obs=latent.e, latent=latent, noise=noise)

    @torch.no_grad()
    def act(self, policy: ZPRLPolicy, ctx: SteeringContext, u: Tensor) -> Tensor:
        """Normalised action chunk (B, horizon, action_dim) for actor outputs u (B, rl_action_dim)."""
        return policy.generate(policy.decode_latent(ctx.latent.mu), ctx.noise)


class LatentSteering(Steering):
    """ZPRL: RL observation concat(e, mu); z' = mu + scale * u is decoded and fed to the frozen generator."""

    name = "latent"

    def rl_obs_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.cond_dim + self.rl_action_dim(policy)

    def rl_action_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.z_dim if policy.config.bottleneck else policy.config.cond_dim

    @torch.no_grad()
    def observe(self, policy: ZPRLPolicy, norm_batch: dict[str, Tensor], noise: Tensor) -> SteeringContext:
        latent = policy.encode_latent(norm_batch)
        return SteeringContext(rl_obs=torch.cat([latent.e, latent.mu], dim=-1), latent=latent, noise=noise)

    def steered_latent(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        """z' = mu + scale * u, so |z' - mu| <= scale elementwise."""
        return ctx.latent.mu + self.scale * u

    @torch.no_grad()
    def act(self, policy: ZPRLPolicy, ctx: SteeringContext, u: Tensor) -> Tensor:
        return policy.generate(policy.decode_latent(self.steered_latent(ctx, u)), ctx.noise)


class ActionSteering(Steering):
    """Action residual: RL observation concat(e, executable base actions); a' = a + scale * u on those actions.

    The residual lives in the normalised action space; with min-max action normalisation the result is
    clamped to [-1, 1] (the range the generator was trained on). During collection a chunk is perturbed
    with probability min(1, env_steps / schedule_steps) (always when ``schedule_steps`` is 0).
    """

    name = "action"

    def __init__(self, scale: float = 1.0, schedule_steps: int = 0):
        super().__init__(scale)
        if schedule_steps < 0:
            raise ValueError(f"action_schedule_steps must be >= 0, got {schedule_steps}.")
        self.schedule_steps = schedule_steps

    def rl_obs_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.cond_dim + self.rl_action_dim(policy)

    def rl_action_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.n_action_steps * policy.config.action_feature.shape[0]

    def residual_probability(self, env_steps: int) -> float:
        return 1.0 if self.schedule_steps == 0 else min(1.0, env_steps / self.schedule_steps)

    @torch.no_grad()
    def observe(self, policy: ZPRLPolicy, norm_batch: dict[str, Tensor], noise: Tensor) -> SteeringContext:
        latent = policy.encode_latent(norm_batch)
        base = policy.generate(policy.decode_latent(latent.mu), noise)
        executable = base[:, policy.action_chunk_slice].flatten(1)
        return SteeringContext(rl_obs=torch.cat([latent.e, executable], dim=-1), latent=latent, noise=noise,
                               base_chunk=base)

    @torch.no_grad()
    def act(self, policy: ZPRLPolicy, ctx: SteeringContext, u: Tensor) -> Tensor:
        chunk = ctx.base_chunk.clone()
        steps = policy.action_chunk_slice
        executable = chunk[:, steps] + self.scale * u.view(chunk.shape[0], -1, chunk.shape[-1])
        if NormalizationMode(policy.config.normalization_mapping["ACTION"]) == NormalizationMode.MIN_MAX:
            executable = executable.clamp(-1.0, 1.0)
        chunk[:, steps] = executable
        return chunk


class NoiseSteering(Steering):
    """DSRL: the actor chooses the frozen generator's initial noise, noise = scale * u (horizon x action_dim)."""

    name = "noise"

    def rl_action_dim(self, policy: ZPRLPolicy) -> int:
        return policy.config.horizon * policy.config.action_feature.shape[0]

    def initial_noise(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        """noise = scale * u as (B, horizon, action_dim), so |noise| <= scale elementwise."""
        return self.scale * u.view_as(ctx.noise)

    @torch.no_grad()
    def act(self, policy: ZPRLPolicy, ctx: SteeringContext, u: Tensor) -> Tensor:
        return policy.generate(policy.decode_latent(ctx.latent.mu), self.initial_noise(ctx, u))


class NoSteering(Steering):
    """The frozen base policy itself (baseline evaluated under the same budget); nothing is learned."""

    name = "none"
    trainable = False

    def rl_action_dim(self, policy: ZPRLPolicy) -> int:
        return 0


STEERINGS = {cls.name: cls for cls in (LatentSteering, ActionSteering, NoiseSteering, NoSteering)}


def make_steering(name: str, scale: float = 1.0, action_schedule_steps: int = 0) -> Steering:
    """Steering by config name: "latent" | "action" | "noise" | "none"."""
    if name not in STEERINGS:
        raise ValueError(f"Unknown steering {name!r}; choose one of {sorted(STEERINGS)}.")
    if name == "action":
        return ActionSteering(scale, action_schedule_steps)
    if action_schedule_steps:
        raise ValueError(f"action_schedule_steps only applies to steering='action', not {name!r}; set it to 0.")
    return STEERINGS[name](scale)
