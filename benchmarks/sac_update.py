"""Time per SAC update: zprl's vectorised SAC against a CleanRL-style reference SAC, in one run.

The reference is written here the way CleanRL's ``sac_continuous_action.py`` writes it, extended to an
ensemble: one ``nn.Sequential`` of ``nn.Linear`` layers per critic in an ``nn.ModuleList`` (a Python loop over
critics), per-parameter Polyak averaging, plain Adam, ``.item()`` metrics after every update. Both sides use
the same sizes and the same update schedule (zprl's defaults: the authors' SAC, actor and temperature every
second critic update, gradient clipping): only the implementation differs. Targets (issue "a fast online
loop"): ratio <= 0.5 at 10 critics and <= 1.0 at 2 critics. Usage:

    OMP_NUM_THREADS=1 uv run python benchmarks/sac_update.py --critics 2 10 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from zprl.online.replay_buffer import Transitions
from zprl.online.sac import SAC, Actor, SACConfig


class ReferenceSAC(nn.Module):
    """CleanRL-style SAC with a list of per-critic MLPs (the implementation zprl had before vectorising)."""

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig):
        super().__init__()
        self.config = config
        self.actor = Actor(obs_dim, action_dim, config.hidden_dims, config.activation)
        self.critics = nn.ModuleList(self._critic(obs_dim + action_dim, config) for _ in range(config.num_critics))
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = config.target_entropy_per_dim * action_dim
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.steps = 0

    @staticmethod
    def _critic(in_dim: int, config: SACConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in config.hidden_dims:
            layers += [nn.Linear(in_dim, width), nn.GELU()]
            in_dim = width
        return nn.Sequential(*layers, nn.Linear(in_dim, 1))

    def _q(self, critics: nn.ModuleList, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1)
        return torch.stack([0.5 * (torch.tanh(critic(x).squeeze(-1)) + 1) for critic in critics])

    def update(self, batch: Transitions) -> dict[str, float]:
        c = self.config
        self.steps += 1
        with torch.no_grad():
            next_u, _, _ = self.actor.sample(batch.next_obs)
            next_q = self._q(self.targets, batch.next_obs, next_u).min(0).values
            target = batch.reward + (1 - batch.terminal) * batch.discount * next_q
        q = self._q(self.critics, batch.obs, batch.action)
        critic_loss = sum(F.mse_loss(qi, target) for qi in q)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critics.parameters(), c.grad_clip_norm)
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.item(), "q_mean": q.mean().item()}
        if self.steps % c.policy_freq == 0:
            alpha = self.log_alpha.exp().detach()
            u, log_prob, _ = self.actor.sample(batch.obs)
            actor_loss = (alpha * log_prob - self._q(self.critics, batch.obs, u).mean(0)).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip_norm)
            self.actor_opt.step()
            alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()
            metrics |= {"actor_loss": actor_loss.item(), "alpha": alpha.item()}
        if self.steps % c.target_freq == 0:
            with torch.no_grad():
                for target_param, param in zip(self.targets.parameters(), self.critics.parameters(), strict=True):
                    target_param.data.copy_(c.tau * param.data + (1 - c.tau) * target_param.data)
        return metrics


def random_batch(batch_size: int, obs_dim: int, action_dim: int, device: torch.device) -> Transitions:
    g = torch.Generator(device).manual_seed(0)
    return Transitions(obs=torch.randn(batch_size, obs_dim, generator=g, device=device),
                       action=torch.rand(batch_size, action_dim, generator=g, device=device) * 2 - 1,
                       reward=(torch.rand(batch_size, generator=g, device=device) > 0.9).float(),
                       next_obs=torch.randn(batch_size, obs_dim, generator=g, device=device),
                       terminal=torch.zeros(batch_size, device=device),
                       discount=torch.full((batch_size,), 0.99 ** 4, device=device))


def seconds_per_update(run_updates, updates: int, device: torch.device) -> float:
    """Wall time of ``updates`` updates (including the per-iteration metric read-back) per update."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run_updates(updates)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / updates


def measure(num_critics: int, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Median seconds per update of the reference, zprl's SAC and (``--compile``) zprl's SAC compiled."""
    config = SACConfig(hidden_dims=(args.hidden,) * 3, num_critics=num_critics, critic_subset=2,
                       batch_size=args.batch_size)
    batch = random_batch(args.batch_size, args.obs_dim, args.action_dim, device)
    torch.manual_seed(0)
    reference = ReferenceSAC(args.obs_dim, args.action_dim, config).to(device)

    def reference_updates(n: int) -> None:
        for _ in range(n):
            reference.update(batch)

    def zprl_updates(config: SACConfig):
        zprl = SAC(args.obs_dim, args.action_dim, config).to(device)
        optimizers = zprl.configure_optimizers()

        def run(n: int) -> None:  # as OnlineRLModule._update: metrics read back once per iteration
            metrics = [zprl.update(batch, optimizers) for _ in range(n)]
            torch.stack([m["critic_loss"] for m in metrics]).tolist()
        return run

    runners = [reference_updates, zprl_updates(config)]
    if args.compile:
        runners.append(zprl_updates(dataclasses.replace(config, compile=True, compile_mode=args.compile_mode)))
    for run in runners:  # untimed warm-up (and compilation)
        run(10)
    times = [[] for _ in runners]
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        for run, seconds in zip(runners, times, strict=True):
            seconds.append(seconds_per_update(run, args.updates, device))
    return [statistics.median(seconds) for seconds in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--critics", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=39, help="Can, low-dim paper preset: e (23) + z_s (16)")
    parser.add_argument("--action-dim", type=int, default=16, help="z_dim")
    parser.add_argument("--updates", type=int, default=50, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time zprl's SAC with sac.compile=True")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead on a GPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\nSAC update, batch {args.batch_size}, 3x{args.hidden} MLPs, obs {args.obs_dim}, action {args.action_dim}, "
          f"{where}; median of {args.repeats} x {args.updates} updates\n")
    compiled = " | zprl compiled ms/update | ratio (compiled / reference)" if args.compile else ""
    print(f"| critics | reference ms/update | zprl ms/update | ratio (zprl / reference){compiled} |")
    print("|---:|---:|---:|---:" + ("|---:|---:" if args.compile else "") + "|")
    for num_critics in args.critics:
        reference, *ours = measure(num_critics, args, device)
        cells = [f"{1e3 * seconds:.2f} | {seconds / reference:.3f}" for seconds in ours]
        print(f"| {num_critics} | {1e3 * reference:.2f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
