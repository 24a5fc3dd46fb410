"""Soft actor-critic over chunk-level macro actions (CleanRL-style, with a critic ensemble).

One RL step = one action chunk of k env steps: the buffer stores the summed discounted reward and the
per-transition discount gamma^k, so the TD target is ``r + (1 - terminal) * discount * V(s')``.
The actor outputs u in (-1, 1)^d; a :mod:`zprl.online.steering` turns u into a bounded perturbation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zprl.online.replay_buffer import Transitions


class CriticDivergenceError(RuntimeError):
    """Q-values or SAC losses became NaN/inf or exceeded ``SACConfig.q_divergence_threshold``."""


@dataclass
class SACConfig:
    """SAC hyper-parameters.

    Args:
        hidden_dims: widths of the actor and critic MLPs.
        num_critics: size of the Q ensemble (LayerNorm MLPs); targets use the ensemble minimum.
        actor_lr / critic_lr / alpha_lr: Adam learning rates.
        init_alpha: initial entropy temperature (tuned automatically towards ``target_entropy``).
        target_entropy: entropy target of the tanh-Gaussian; None means -action_dim.
        tau: Polyak rate of the target critics.
        gamma: per env-step discount; a macro step of k env steps is discounted by gamma^k.
        batch_size: transitions per update.
        reward_scale: multiplies rewards in the TD target.
        residual_penalty: weight of mean(tanh(m)^2), the deterministic residual's squared size, in the actor
            loss: keeps the steering near zero (the base policy) where the critic gives no evidence to move.
        q_divergence_threshold: |Q| or |TD target| above this raises :class:`CriticDivergenceError`.
        log_std_min / log_std_max: range of the actor's log standard deviation (before tanh).
    """

    hidden_dims: Sequence[int] = (256, 256)
    num_critics: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    target_entropy: float | None = None
    tau: float = 0.005
    gamma: float = 0.99
    batch_size: int = 256
    reward_scale: float = 1.0
    residual_penalty: float = 0.0
    q_divergence_threshold: float = 1e4
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self):
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}.")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"Need 0 < gamma <= 1 and 0 < tau <= 1; got gamma={self.gamma}, tau={self.tau}.")
        if self.init_alpha <= 0:
            raise ValueError(f"init_alpha must be > 0, got {self.init_alpha}.")
        if self.residual_penalty < 0:
            raise ValueError(f"residual_penalty must be >= 0, got {self.residual_penalty}.")


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    """Linear (+ LayerNorm) + ReLU hidden layers and a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), *([nn.LayerNorm(width)] if layer_norm else []), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-Gaussian policy u = tanh(m + s * eps); the output layer starts at zero, so the mean action is 0."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], log_std_min: float = -5.0,
                 log_std_max: float = 2.0):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 2 * action_dim)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std of the pre-tanh Gaussian (log-std squashed into its range as in CleanRL)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterised u in (-1, 1)^d, its log-probability (B,) and the deterministic action tanh(m)."""
        mean, log_std = self(obs)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        x = mean + log_std.exp() * eps
        gaussian_log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(x) / dx| = log(1 - tanh(x)^2), written stably.
        log_det = (2 * (math.log(2) - x - F.softplus(-2 * x))).sum(-1)
        return torch.tanh(x), gaussian_log_prob - log_det, torch.tanh(mean)

    def deterministic(self, obs: Tensor) -> Tensor:
        """The mean action tanh(m), used at evaluation."""
        return torch.tanh(self(obs)[0])


class CriticEnsemble(nn.Module):
    """``num_critics`` independent Q(s, u) LayerNorm MLPs evaluated together: output (num_critics, B)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], num_critics: int):
        super().__init__()
        self.critics = nn.ModuleList(
            mlp(obs_dim + action_dim, hidden_dims, 1, layer_norm=True) for _ in range(num_critics))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([critic(x).squeeze(-1) for critic in self.critics])


class SAC(nn.Module):
    """Actor, critic ensemble, target critics and the entropy temperature, with one update step.

    Optimisers are created by :meth:`configure_optimizers` (so Lightning owns and checkpoints them) and
    passed to :meth:`update` in the same order: actor, critic, alpha.
    """

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig | None = None):
        super().__init__()
        self.config = config = config or SACConfig()
        if action_dim < 1:
            raise ValueError(f"SAC needs action_dim >= 1, got {action_dim}.")
        self.actor = Actor(obs_dim, action_dim, config.hidden_dims, config.log_std_min, config.log_std_max)
        self.critic = CriticEnsemble(obs_dim, action_dim, config.hidden_dims, config.num_critics)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = float(-action_dim if config.target_entropy is None else config.target_entropy)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.config
        return [torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr),
                torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr),
                torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)]

    def update(self, batch: Transitions, optimizers: Sequence, backward: Callable[[Tensor], None] = Tensor.backward,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One critic, actor and temperature step on ``batch``; returns float metrics.

        ``backward`` lets Lightning's ``manual_backward`` run the backward passes. Raises
        :class:`CriticDivergenceError` if anything became non-finite or |Q| exceeds the threshold.
        """
        actor_opt, critic_opt, alpha_opt = optimizers
        c = self.config
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_u, next_log_prob, _ = self.actor.sample(batch.next_obs, generator)
            next_v = self.critic_target(batch.next_obs, next_u).min(0).values - alpha * next_log_prob
            target_q = c.reward_scale * batch.reward + (1.0 - batch.terminal) * batch.discount * next_v
        q = self.critic(batch.obs, batch.action)
        critic_loss = F.mse_loss(q, target_q.expand_as(q), reduction="none").mean(1).sum()
        critic_opt.zero_grad()
        backward(critic_loss)
        critic_opt.step()

        u, log_prob, residual = self.actor.sample(batch.obs, generator)
        actor_loss = ((alpha * log_prob - self.critic(batch.obs, u).min(0).values).mean()
                      + c.residual_penalty * residual.square().mean())
        actor_opt.zero_grad()
        backward(actor_loss)
        actor_opt.step()

        alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
        alpha_opt.zero_grad()
        backward(alpha_loss)
        alpha_opt.step()

        with torch.no_grad():
            for target, online in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                target.lerp_(online, c.tau)

        names = ("critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "residual_abs", "q_mean", "q_abs_max",
                 "target_q_mean")
        values = torch.stack([critic_loss.detach(), actor_loss.detach(), alpha_loss.detach(), alpha,
                              -log_prob.detach().mean(), residual.detach().abs().mean(), q.detach().mean(),
                              torch.maximum(q.detach().abs().max(), target_q.abs().max()), target_q.mean()]).tolist()
        metrics = dict(zip(names, values, strict=True))
        self._check_divergence(metrics)
        return metrics

    def _check_divergence(self, metrics: dict[str, float]) -> None:
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        if bad or metrics["q_abs_max"] > self.config.q_divergence_threshold:
            problem = (f"non-finite {', '.join(bad)}" if bad else
                       f"|Q| (or its TD target) reached {metrics['q_abs_max']:.3g} > q_divergence_threshold "
                       f"{self.config.q_divergence_threshold:.3g}")
            raise CriticDivergenceError(
                f"SAC critic diverged ({problem}). Lower the learning rates (sac.critic_lr, sac.actor_lr), the reward "
                "scale (sac.reward_scale) or the update-to-data ratio (utd_ratio), and resume from the last "
                "checkpoint.")
