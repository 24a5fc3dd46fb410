"""How the RL actor's output u in (-1, 1)^d steers the frozen base policy, one action chunk at a time.

A steering is bound to one frozen policy. It turns a NORMALISED observation batch into an RL observation
(:meth:`Steering.observe`), the actor's u into a NORMALISED (B, horizon, action_dim) chunk
(:meth:`Steering.act`), and (rl_obs, u) into what the critic scores (:meth:`Steering.critic_action`),
with a perturbation bounded elementwise by ``scale``:

- ``latent`` (ZPRL): z' = c + scale * u, chunk = generate(decode(z'), noise), where the centre c is the
  sampled posterior latent z_s = mu + sigma * eps while collecting (the posterior noise explores, as in the
  authors' code) and mu at evaluation. RL observation [e, c]; the critic scores z' itself. On a policy
  trained with ``bottleneck=False`` (mu = e, sigma = 0, identity decode) the same steering is the
  no-bottleneck ablation: it perturbs the raw embedding e. With ``conditioning="raw"`` on a VIB policy whose
  generator trained on e (decoupled or post hoc) it is the same ablation without a second pretraining:
  the policy is taken without its bottleneck (centre e, no posterior noise) and e + scale * u conditions
  the generator directly.
- ``action`` (Policy Decorator / ResiP): a' = a + scale * u on the executable part of the base chunk,
  applied to a chunk with probability min(1, env_steps / schedule_steps) during collection. RL observation
  [e, a]; the critic scores a'.
- ``noise`` (DSRL): the actor picks the generator's initial noise, ``noise_steps`` steps of scale * u tiled
  over the horizon. RL observation e; the critic scores the noise.
- ``none``: the base policy, no learning.

``conditioning`` says what conditions the generator for the base chunk: "latent" (decode(mu), the policy
ZPRL steers) or "raw" (the embedding e: the same network without its bottleneck when the VIB was trained
decoupled or post hoc, which is the base the authors' action residual steers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lerobot.configs.types import NormalizationMode
from torch import Tensor

from zprl.policy import ZPRLPolicy
from zprl.policy.modeling_zprl import LatentEncoding

CONDITIONINGS = ("latent", "raw")
LATENT_CENTRES = ("sample", "mean")


@dataclass
class SteeringContext:
    """What a steering computed from an observation batch: the RL observation and what ``act`` reuses."""

    rl_obs: Tensor  # (B, rl_obs_dim), detached
    latent: LatentEncoding
    noise: Tensor  # (B, horizon, action_dim) base generator noise
    centre: Tensor | None = None  # (B, z_dim) latent the residual is added to (latent steering)
    base_chunk: Tensor | None = None  # (B, horizon, action_dim), action steering only


class Steering:
    """Base class: RL observation = e, and ``act`` with u = 0 gives the base chunk of ``conditioning``.

    Args:
        policy: the frozen ZPRLPolicy (eval mode, no gradients).
        scale: bound of the perturbation (lambda, lambda_a or the noise bound).
        conditioning: "latent" or "raw" (see the module docstring).
    """

    name = ""
    trainable = True  # False: nothing to learn, the collector runs the base policy

    def __init__(self, policy: ZPRLPolicy, scale: float = 1.0, conditioning: str = "latent"):
        if scale < 0:
            raise ValueError(f"The steering scale must be >= 0, got {scale}.")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}.")
        config = policy.config
        if conditioning == "raw" and config.bottleneck and config.vib_training == "joint":
            raise ValueError("conditioning='raw' needs a generator trained on the raw embedding, but this policy's "
                             "VIB was trained jointly (vib_training='joint'); use base_conditioning='latent'.")
        self.policy = policy
        self.scale = scale
        self.conditioning = conditioning

    @property
    def rl_obs_dim(self) -> int:
        return self.policy.config.cond_dim

    @property
    def rl_action_dim(self) -> int:
        raise NotImplementedError

    def residual_probability(self, env_steps: int) -> float:
        """Probability that a collected chunk is perturbed (1 unless there is an exploration schedule)."""
        return 1.0

    def base_conditioning(self, latent: LatentEncoding) -> Tensor:
        """The generator's conditioning of the unsteered base policy."""
        return latent.e if self.conditioning == "raw" else self.policy.decode_latent(latent.mu)

    @torch.no_grad()
    def observe(self, norm_batch: dict[str, Tensor], noise: Tensor, explore: bool = False,
                generator: torch.Generator | None = None) -> SteeringContext:
        """Encode a normalised observation batch; ``noise`` is the base generator noise for this chunk.

        ``explore`` is True while collecting training data (latent steering then centres on a posterior
        sample drawn with ``generator``) and False at evaluation.
        """
        latent = self.policy.encode_latent(norm_batch)
        return SteeringContext(rl_obs=latent.e, latent=latent, noise=noise)

    @torch.no_grad()
    def act(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        """Normalised action chunk (B, horizon, action_dim) for actor outputs u (B, rl_action_dim)."""
        return self.policy.generate(self.base_conditioning(ctx.latent), ctx.noise)

    def critic_action(self, rl_obs: Tensor, u: Tensor) -> Tensor:
        """What the critic scores for residual u at ``rl_obs`` (differentiable in u): the steered quantity."""
        return self.scale * u

    def warmup_u(self, ctx: SteeringContext, generator: torch.Generator | None) -> Tensor:
        """The u that reproduces the base policy during warm-up (zero residual)."""
        return ctx.rl_obs.new_zeros(ctx.rl_obs.shape[0], self.rl_action_dim)

    def diagnostics(self, ctx: SteeringContext, u: Tensor) -> dict[str, Tensor]:
        """Per-chunk sums of squares for RMS metrics (keys end in ``_sq``; divide by the element count)."""
        step = self.scale * u
        return {"step_sq": step.square().sum(), "step_count": torch.tensor(float(step.numel()))}


class LatentSteering(Steering):
    """ZPRL: RL observation [e, c]; z' = c + scale * u is decoded and fed to the frozen generator.

    Args:
        conditioning: "latent" (ZPRL) or "raw" (the no-bottleneck ablation: z' = e + scale * u conditions the
            generator, which must have trained on e).
        centre: "sample" (c = z_s = mu + sigma * eps while collecting, mu at evaluation; the authors') or
            "mean" (c = mu always).
    """

    name = "latent"

    def __init__(self, policy: ZPRLPolicy, scale: float = 0.2, conditioning: str = "latent", centre: str = "sample"):
        super().__init__(policy, scale, conditioning)
        if centre not in LATENT_CENTRES:
            raise ValueError(f"latent_centre must be one of {LATENT_CENTRES}, got {centre!r}.")
        self.centre = centre

    @property
    def rl_obs_dim(self) -> int:
        return self.policy.config.cond_dim + self.rl_action_dim

    @property
    def rl_action_dim(self) -> int:
        config = self.policy.config
        return config.z_dim if config.bottleneck and self.conditioning == "latent" else config.cond_dim

    @torch.no_grad()
    def observe(self, norm_batch: dict[str, Tensor], noise: Tensor, explore: bool = False,
                generator: torch.Generator | None = None) -> SteeringContext:
        latent = self.policy.encode_latent(norm_batch)
        if self.conditioning == "raw":  # the policy without its bottleneck, as if trained with bottleneck=False
            latent = LatentEncoding(latent.e, latent.e, torch.zeros_like(latent.e))
        centre = latent.mu
        if explore and self.centre == "sample":
            eps = torch.randn(latent.mu.shape, generator=generator, device=latent.mu.device, dtype=latent.mu.dtype)
            centre = latent.mu + latent.sigma * eps
        return SteeringContext(rl_obs=torch.cat([latent.e, centre], dim=-1), latent=latent, noise=noise,
                               centre=centre)

    def steered_latent(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        """z' = c + scale * u, so |z' - c| <= scale elementwise."""
        return ctx.centre + self.scale * u

    @torch.no_grad()
    def act(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        steered = self.steered_latent(ctx, u)
        return self.policy.generate(steered if self.conditioning == "raw" else self.policy.decode_latent(steered),
                                    ctx.noise)

    def critic_action(self, rl_obs: Tensor, u: Tensor) -> Tensor:
        return rl_obs[:, -self.rl_action_dim:] + self.scale * u

    def diagnostics(self, ctx: SteeringContext, u: Tensor) -> dict[str, Tensor]:
        count = torch.tensor(float(ctx.centre.numel()))
        return {**super().diagnostics(ctx, u), "z_sq": ctx.centre.square().sum(), "mu_sq": ctx.latent.mu.square().sum(),
                "z_count": count}


class ActionSteering(Steering):
    """Action residual: RL observation [e, executable base actions]; a' = a + scale * u on those actions.

    The residual lives in the normalised action space; with min-max action normalisation the result is
    clamped to [-1, 1] (the range the generator was trained on). During collection a chunk is perturbed
    with probability min(1, env_steps / schedule_steps) (always when ``schedule_steps`` is 0).
    """

    name = "action"

    def __init__(self, policy: ZPRLPolicy, scale: float = 0.1, conditioning: str = "latent",
                 schedule_steps: int = 0):
        super().__init__(policy, scale, conditioning)
        if schedule_steps < 0:
            raise ValueError(f"action_schedule_steps must be >= 0, got {schedule_steps}.")
        self.schedule_steps = schedule_steps

    @property
    def rl_obs_dim(self) -> int:
        return self.policy.config.cond_dim + self.rl_action_dim

    @property
    def rl_action_dim(self) -> int:
        return self.policy.config.n_action_steps * self.policy.config.action_feature.shape[0]

    def residual_probability(self, env_steps: int) -> float:
        return 1.0 if self.schedule_steps == 0 else min(1.0, env_steps / self.schedule_steps)

    @torch.no_grad()
    def observe(self, norm_batch: dict[str, Tensor], noise: Tensor, explore: bool = False,
                generator: torch.Generator | None = None) -> SteeringContext:
        latent = self.policy.encode_latent(norm_batch)
        base = self.policy.generate(self.base_conditioning(latent), noise)
        executable = base[:, self.policy.action_chunk_slice].flatten(1)
        return SteeringContext(rl_obs=torch.cat([latent.e, executable], dim=-1), latent=latent, noise=noise,
                               base_chunk=base)

    @torch.no_grad()
    def act(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        chunk = ctx.base_chunk.clone()
        steps = self.policy.action_chunk_slice
        executable = chunk[:, steps] + self.scale * u.view(chunk.shape[0], -1, chunk.shape[-1])
        if NormalizationMode(self.policy.config.normalization_mapping["ACTION"]) == NormalizationMode.MIN_MAX:
            executable = executable.clamp(-1.0, 1.0)
        chunk[:, steps] = executable
        return chunk

    def critic_action(self, rl_obs: Tensor, u: Tensor) -> Tensor:
        return rl_obs[:, -self.rl_action_dim:] + self.scale * u


class NoiseSteering(Steering):
    """DSRL: the actor chooses the frozen generator's initial noise.

    u holds ``noise_steps`` steps of action-sized noise (the authors: 1), each scaled by ``scale`` and
    repeated over ``horizon / noise_steps`` consecutive steps; ``noise_steps = horizon`` gives every step
    its own noise. Warm-up draws the base policy's own noise, N(0, I) clipped to the bound.
    """

    name = "noise"

    def __init__(self, policy: ZPRLPolicy, scale: float = 1.5, conditioning: str = "latent", noise_steps: int = 1):
        super().__init__(policy, scale, conditioning)
        horizon = policy.config.horizon
        if noise_steps < 1 or horizon % noise_steps:
            raise ValueError(f"noise_steps must divide the policy's horizon {horizon}, got {noise_steps}.")
        self.noise_steps = noise_steps

    @property
    def rl_action_dim(self) -> int:
        return self.noise_steps * self.policy.config.action_feature.shape[0]

    def initial_noise(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        """scale * u tiled to (B, horizon, action_dim), so |noise| <= scale elementwise."""
        steps = u.view(u.shape[0], self.noise_steps, -1)
        return self.scale * steps.repeat_interleave(self.policy.config.horizon // self.noise_steps, dim=1)

    @torch.no_grad()
    def act(self, ctx: SteeringContext, u: Tensor) -> Tensor:
        return self.policy.generate(self.base_conditioning(ctx.latent), self.initial_noise(ctx, u))

    def warmup_u(self, ctx: SteeringContext, generator: torch.Generator | None) -> Tensor:
        shape = (ctx.rl_obs.shape[0], self.rl_action_dim)
        noise = torch.randn(shape, generator=generator, device=ctx.rl_obs.device)
        return (noise / self.scale).clamp(-1.0, 1.0) if self.scale > 0 else noise.zero_()


class NoSteering(Steering):
    """The frozen base policy itself (baseline evaluated under the same budget); nothing is learned."""

    name = "none"
    trainable = False

    @property
    def rl_action_dim(self) -> int:
        return 0


STEERINGS = {cls.name: cls for cls in (LatentSteering, ActionSteering, NoiseSteering, NoSteering)}
DEFAULT_SCALES = {"latent": 0.2, "action": 0.1, "noise": 1.5, "none": 0.0}  # the authors' lambda, lambda_a, bound


def default_conditioning(name: str, policy: ZPRLPolicy) -> str:
    """The authors' base per method: the action residual steers the policy without its VIB ("raw") when
    the generator was trained on e; every other method steers the VIB policy ("latent")."""
    config = policy.config
    trained_on_e = not config.bottleneck or config.vib_training in ("decoupled", "posthoc")
    return "raw" if name == "action" and trained_on_e else "latent"


def make_steering(name: str, policy: ZPRLPolicy, scale: float | None = None, conditioning: str | None = None,
                  action_schedule_steps: int = 0, latent_centre: str = "sample", noise_steps: int = 1) -> Steering:
    """Steering by config name ("latent" | "action" | "noise" | "none") bound to ``policy``.

    ``scale`` and ``conditioning`` default per method (:data:`DEFAULT_SCALES`, :func:`default_conditioning`).
    """
    if name not in STEERINGS:
        raise ValueError(f"Unknown steering {name!r}; choose one of {sorted(STEERINGS)}.")
    if action_schedule_steps and name != "action":
        raise ValueError(f"action_schedule_fraction only applies to steering='action', not {name!r}; set it to 0.")
    scale = DEFAULT_SCALES[name] if scale is None else scale
    conditioning = conditioning or default_conditioning(name, policy)
    if name == "latent":
        return LatentSteering(policy, scale, conditioning, latent_centre)
    if name == "action":
        return ActionSteering(policy, scale, conditioning, action_schedule_steps)
    if name == "noise":
        return NoiseSteering(policy, scale, conditioning, noise_steps)
    return NoSteering(policy, scale, conditioning)
