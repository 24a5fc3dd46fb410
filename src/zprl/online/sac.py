"""Soft actor-critic over chunk-level macro actions (CleanRL-style, with a vectorised critic ensemble).

One RL step = one action chunk of k env steps: the buffer stores the summed discounted reward and the
per-transition discount gamma^k, so the TD target is ``r + (1 - terminal) * discount * V(s')``.
The actor outputs u in (-1, 1)^d; a :mod:`zprl.online.steering` turns u into a bounded perturbation and
tells the critic what to score (``critic_action``: the perturbed latent / action, as in the authors' code).
Defaults follow the authors' ZPRL SAC (docs/REFERENCE_MAP.md); each difference is a field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zprl.online.replay_buffer import Transitions

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish}
CriticAction = Callable[[Tensor, Tensor], Tensor]


class CriticDivergenceError(RuntimeError):
    """Q-values or SAC losses became NaN/inf or exceeded ``SACConfig.q_divergence_threshold``."""


@dataclass
class SACConfig:
    """SAC hyper-parameters (defaults: the authors' ZPRL settings).

    Args:
        hidden_dims: widths of the actor and critic MLPs (authors: 3 x 256).
        activation: hidden activation of both ("gelu", "relu" or "mish").
        critic_layer_norm: LayerNorm after each critic hidden layer (authors: off for robomimic).
        bounded_q: squash the critic output to [0, 1] with 0.5 * (tanh(q) + 1) (authors: on; fits sparse 0/1
            rewards with termination on success). False: unbounded linear output.
        num_critics: size of the Q ensemble.
        critic_subset: TD targets take the minimum over a random subset of this many target critics (REDQ;
            equal to num_critics: the minimum over all).
        actor_q_reduction: the actor maximises the "mean" (authors) or the "min" over the critics.
        entropy_in_target: subtract alpha * log pi' in the TD target (standard SAC; authors: off).
        critic_input: "steered": the critic scores the steered quantity the steering gives (perturbed latent or
            action; authors); "residual": the critic scores u itself.
        actor_lr / critic_lr / alpha_lr: Adam learning rates.
        init_alpha: initial entropy temperature (tuned automatically towards the target entropy).
        target_entropy_per_dim: target entropy = this * action_dim (authors: -0.5); ``target_entropy`` overrides.
        target_entropy: absolute entropy target, or None.
        policy_freq: actor and temperature update every this many critic updates (authors: 2).
        target_freq: Polyak update of the target critics every this many critic updates (authors: 2).
        tau: Polyak rate of the target critics.
        grad_clip_norm: gradient-norm clip of critics and actor (authors: 50; 0: off).
        gamma: per env-step discount; a macro step of k env steps is discounted by gamma^k.
        batch_size: transitions per update.
        reward_scale: multiplies rewards in the TD target.
        residual_penalty: weight of mean(tanh(m)^2), the deterministic residual's squared size, in the actor
            loss (authors: 0; zprl's earlier conservative default was 1).
        q_divergence_threshold: |Q| or |TD target| above this raises :class:`CriticDivergenceError`.
        log_std_min / log_std_max: range of the actor's log standard deviation (before tanh).
        init_log_std_logit: the log-std head's bias at initialisation; 0 puts log std at the middle of its
            range (-4 for [-10, 2]: sigma ~ 0.02, the authors' small first kicks).
        compile: ``torch.compile`` the actor and the critic ensembles (forward and backward; the optimiser
            steps stay eager). Off by default: on one CPU thread the update is GEMM-bound and compiling gave
            no gain (benchmarks/RESULTS.md, "SAC update"); on a GPU try ``compile_mode: reduce-overhead``
            (CUDA graphs) where the many small kernels of a small MLP dominate.
        compile_mode: ``torch.compile`` mode (None: the default mode).
    """

    hidden_dims: Sequence[int] = (256, 256, 256)
    activation: str = "gelu"
    critic_layer_norm: bool = False
    bounded_q: bool = True
    num_critics: int = 2
    critic_subset: int = 2
    actor_q_reduction: str = "mean"
    entropy_in_target: bool = False
    critic_input: str = "steered"
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.01
    target_entropy_per_dim: float = -0.5
    target_entropy: float | None = None
    policy_freq: int = 2
    target_freq: int = 2
    tau: float = 0.005
    grad_clip_norm: float = 50.0
    gamma: float = 0.99
    batch_size: int = 256
    reward_scale: float = 1.0
    residual_penalty: float = 0.0
    q_divergence_threshold: float = 1e4
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    init_log_std_logit: float = 0.0
    compile: bool = False
    compile_mode: str | None = None

    def __post_init__(self):
        if self.num_critics < 1 or not 1 <= self.critic_subset <= self.num_critics:
            raise ValueError(f"Need num_critics >= 1 and 1 <= critic_subset <= num_critics; got "
                             f"num_critics={self.num_critics}, critic_subset={self.critic_subset}.")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"Need 0 < gamma <= 1 and 0 < tau <= 1; got gamma={self.gamma}, tau={self.tau}.")
        for name in ("init_alpha", "actor_lr", "critic_lr", "alpha_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sac.{name} must be > 0, got {getattr(self, name)}.")
        for name in ("batch_size", "policy_freq", "target_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"sac.{name} must be >= 1, got {getattr(self, name)}.")
        if self.residual_penalty < 0 or self.grad_clip_norm < 0:
            raise ValueError(f"Need residual_penalty >= 0 and grad_clip_norm >= 0; got {self.residual_penalty}, "
                             f"{self.grad_clip_norm}.")
        choices = {"activation": tuple(ACTIVATIONS), "actor_q_reduction": ("mean", "min"),
                   "critic_input": ("steered", "residual")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"sac.{name} must be one of {allowed}, got {getattr(self, name)!r}.")


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "relu") -> nn.Sequential:
    """Linear + activation hidden layers and a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-Gaussian policy u = tanh(m + s * eps).

    Hidden layers use orthogonal init (gain sqrt 2) as the authors'; the mean head starts at zero, so the
    first evaluation is exactly the base policy, and the log-std head at ``init_log_std_logit`` with small
    weights (gain 0.01), so the first exploration kicks are small.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], activation: str = "gelu",
                 log_std_min: float = -10.0, log_std_max: float = 2.0, init_log_std_logit: float = 0.0):
        super().__init__()
        self.trunk = mlp(obs_dim, hidden_dims[:-1], hidden_dims[-1], activation)
        self.trunk.append(ACTIVATIONS[activation]())
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
        self.mean = nn.Linear(hidden_dims[-1], action_dim)
        self.log_std = nn.Linear(hidden_dims[-1], action_dim)
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        nn.init.orthogonal_(self.log_std.weight, 0.01)
        nn.init.constant_(self.log_std.bias, init_log_std_logit)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std of the pre-tanh Gaussian (log-std squashed into its range as in CleanRL)."""
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))
        return self.mean(h), self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)

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


class EnsembleLinear(nn.Module):
    """``num_members`` independent Linear layers applied in one batched matmul: (E, B, in) -> (E, B, out).

    Each member is initialised as ``nn.Linear`` would be (Kaiming-uniform weights, uniform bias).
    """

    def __init__(self, num_members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim))
        for member in range(num_members):
            layer = nn.Linear(in_dim, out_dim)
            with torch.no_grad():
                self.weight[member] = layer.weight.T
                self.bias[member, 0] = layer.bias

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """``num_critics`` independent Q(s, a) MLPs evaluated together in batched matmuls: output (num_critics, B).

    Equivalent to a list of per-critic MLPs with the same weights (member i of every layer is critic i),
    at one kernel per layer instead of one per layer and critic.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], num_critics: int,
                 activation: str = "gelu", layer_norm: bool = False, bounded: bool = True):
        super().__init__()
        self.num_critics, self.bounded = num_critics, bounded
        dims = [obs_dim + action_dim, *hidden_dims]
        self.hidden = nn.ModuleList(EnsembleLinear(num_critics, i, o) for i, o in itertools.pairwise(dims))
        self.norms = nn.ModuleList(_EnsembleLayerNorm(num_critics, width) for width in hidden_dims) if layer_norm \
            else None
        self.activation = ACTIVATIONS[activation]()
        self.out = EnsembleLinear(num_critics, dims[-1], 1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.num_critics, -1, -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.activation(x)
        q = self.out(x).squeeze(-1)
        return 0.5 * (torch.tanh(q) + 1.0) if self.bounded else q


class _EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine transform per ensemble member."""

    def __init__(self, num_members: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_members, 1, width))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, width))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class SAC(nn.Module):
    """Actor, critic ensemble, target critics and the entropy temperature, with one update step.

    Optimisers are created by :meth:`configure_optimizers` (so Lightning owns and checkpoints them) and
    passed to :meth:`update` in the same order: actor, critic, alpha. ``critic_action(obs, u)`` maps a
    residual to what the critic scores (a steering's ``critic_action``); it is used when
    ``config.critic_input == "steered"``.
    """

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig | None = None,
                 critic_action: CriticAction | None = None):
        super().__init__()
        self.config = config = config or SACConfig()
        if action_dim < 1:
            raise ValueError(f"SAC needs action_dim >= 1, got {action_dim}.")
        self.actor = Actor(obs_dim, action_dim, config.hidden_dims, config.activation, config.log_std_min,
                           config.log_std_max, config.init_log_std_logit)
        critic_kwargs = {"activation": config.activation, "layer_norm": config.critic_layer_norm,
                         "bounded": config.bounded_q}
        self.critic = CriticEnsemble(obs_dim, action_dim, config.hidden_dims, config.num_critics, **critic_kwargs)
        self.critic_target = CriticEnsemble(obs_dim, action_dim, config.hidden_dims, config.num_critics,
                                            **critic_kwargs).requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = float(config.target_entropy if config.target_entropy is not None
                                    else config.target_entropy_per_dim * action_dim)
        use_steered = config.critic_input == "steered" and critic_action is not None
        self._critic_action = critic_action if use_steered else (lambda obs, u: u)
        self.num_critic_updates = 0  # drives policy_freq / target_freq; checkpointed by the owner
        if config.compile:  # in place: parameter names and checkpoints stay those of the eager modules
            for module in (self.actor, self.critic, self.critic_target):
                module.compile(mode=config.compile_mode)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.config
        return [torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, foreach=True),
                torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, foreach=True),
                torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)]

    def q_values(self, critic: CriticEnsemble, obs: Tensor, u: Tensor) -> Tensor:
        """(num_critics, B) Q-values of residuals u at ``obs`` through the steering's critic action."""
        return critic(obs, self._critic_action(obs, u))

    def update(self, batch: Transitions, optimizers: Sequence, backward: Callable[[Tensor], None] = Tensor.backward,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One critic step, and the actor, temperature and Polyak steps when their frequency is due.

        Returns detached scalar tensors (no host sync here: the caller reads them back once per iteration and
        passes them to :meth:`check_divergence`); actor-side metrics only on steps that updated the actor.
        ``backward`` lets Lightning's ``manual_backward`` run the backward passes.
        """
        actor_opt, critic_opt, alpha_opt = optimizers
        c = self.config
        alpha = self.log_alpha.exp().detach()
        self.num_critic_updates += 1

        with torch.no_grad():
            next_u, next_log_prob, _ = self.actor.sample(batch.next_obs, generator)
            next_q = self.q_values(self.critic_target, batch.next_obs, next_u)
            if c.critic_subset < c.num_critics:
                subset = torch.randperm(c.num_critics, generator=generator, device=next_q.device)[:c.critic_subset]
                next_q = next_q[subset]
            next_v = next_q.min(0).values
            if c.entropy_in_target:
                next_v = next_v - alpha * next_log_prob
            target_q = c.reward_scale * batch.reward + (1.0 - batch.terminal) * batch.discount * next_v
        q = self.q_values(self.critic, batch.obs, batch.action)
        critic_loss = F.mse_loss(q, target_q.expand_as(q), reduction="none").mean(1).sum()
        critic_opt.zero_grad()
        backward(critic_loss)
        if c.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.critic.parameters(), c.grad_clip_norm, foreach=True)
        critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(), "target_q_mean": target_q.mean(),
                   "q_abs_max": torch.maximum(q.detach().abs().max(), target_q.abs().max())}

        if self.num_critic_updates % c.policy_freq == 0:
            metrics |= self._actor_and_alpha_step(batch, actor_opt, alpha_opt, alpha, backward, generator)
        if self.num_critic_updates % c.target_freq == 0:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), c.tau)
        return metrics

    def _actor_and_alpha_step(self, batch: Transitions, actor_opt, alpha_opt, alpha: Tensor,
                              backward: Callable[[Tensor], None], generator: torch.Generator | None
                              ) -> dict[str, Tensor]:
        c = self.config
        u, log_prob, residual = self.actor.sample(batch.obs, generator)
        self.critic.requires_grad_(False)  # the actor loss needs dQ/du only: skip the critics' weight gradients
        try:
            q_pi = self.q_values(self.critic, batch.obs, u)
        finally:
            self.critic.requires_grad_(True)
        q_pi = q_pi.mean(0) if c.actor_q_reduction == "mean" else q_pi.min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean() + c.residual_penalty * residual.square().mean()
        actor_opt.zero_grad()
        backward(actor_loss)
        if c.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip_norm, foreach=True)
        actor_opt.step()

        alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
        alpha_opt.zero_grad()
        backward(alpha_loss)
        alpha_opt.step()
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(), "alpha": alpha,
                "entropy": -log_prob.detach().mean(), "residual_abs": residual.detach().abs().mean()}

    def check_divergence(self, metrics: dict[str, float]) -> None:
        """Raise :class:`CriticDivergenceError` if a metric is non-finite or |Q| passed the threshold."""
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        if bad or metrics.get("q_abs_max", 0.0) > self.config.q_divergence_threshold:
            problem = (f"non-finite {', '.join(bad)}" if bad else
                       f"|Q| (or its TD target) reached {metrics['q_abs_max']:.3g} > q_divergence_threshold "
                       f"{self.config.q_divergence_threshold:.3g}")
            raise CriticDivergenceError(
                f"SAC critic diverged ({problem}). Lower the learning rates (sac.critic_lr, sac.actor_lr), the reward "
                "scale (sac.reward_scale) or the update-to-data ratio (utd_ratio), and resume from the last "
                "checkpoint.")
