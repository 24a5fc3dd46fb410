"""Chunk-level rollouts of the frozen policy + steering in a vector env: RL transitions and evaluation.

Each env keeps its own observation history and action queue. When an env's queue runs out, a new chunk
is generated for it (batched with every other env that needs one at that step): preprocess the history,
let the steering build the RL observation, pick u, decode the chunk and unnormalise its executable part.
Chunks are aligned to a shared clock of ``n_action_steps`` env steps: an env that starts an episode
mid-period gets a chunk cut at the next period boundary, so the envs keep asking for chunks at the same
steps and inference stays batched.

Vector envs auto-reset in Gymnasium's NEXT_STEP mode: the step after an episode ends returns the reset
observation and ignores that env's action.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from zprl.envs.vector import episode_succeeded, info_flag, require_next_step_autoreset
from zprl.online.replay_buffer import Transitions
from zprl.online.sac import Actor
from zprl.online.steering import Steering, SteeringContext
from zprl.rollout import env_obs_to_batch

WARMUP_ACTIONS = ("zero", "random")
GENERATOR_NOISE_RULES = ("fresh", "zero")


class ObservationHistory:
    """The last ``n_obs_steps`` env observations of every env; a new episode repeats its first observation."""

    def __init__(self, num_envs: int, n_obs_steps: int):
        self.num_envs = num_envs
        self.n_obs_steps = n_obs_steps
        self.frames: dict[str, np.ndarray] = {}

    def start(self, obs: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Begin the episodes of envs in ``mask`` with their observation in ``obs``."""
        for key, value in obs.items():
            if key not in self.frames:
                self.frames[key] = np.zeros((self.num_envs, self.n_obs_steps, *value.shape[1:]), value.dtype)
            self.frames[key][mask] = value[mask][:, None]

    def push(self, obs: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Append the newest observation of envs in ``mask``, dropping their oldest one."""
        for key, value in obs.items():
            frames = self.frames[key]
            frames[mask] = np.concatenate([frames[mask][:, 1:], value[mask][:, None]], axis=1)

    def batch(self, idx: np.ndarray, device: torch.device) -> dict[str, Tensor]:
        """Histories of envs ``idx`` as policy tensors (len(idx), n_obs_steps, ...), images CHW in [0, 1]."""
        flat = {key: frames[idx].reshape(-1, *frames.shape[2:]) for key, frames in self.frames.items()}
        return {key: value.reshape(len(idx), self.n_obs_steps, *value.shape[1:])
                for key, value in env_obs_to_batch(flat, device).items()}


class SteeredAgent:
    """The frozen policy with its processors and a steering (bound to it), acting in ``num_envs`` envs.

    The one interface the collector, the evaluation and the latent analysis use: ``rl_obs_dim``,
    ``rl_action_dim``, :meth:`observe` (RL observation of some envs), :meth:`act` (queue their steered chunk)
    and ``steering.critic_action``. ``generator`` (on the policy's device) draws the base generator noise and
    any exploration randomness, so a run is reproducible from its seed. ``generator_noise`` is the rule for
    the generator's initial noise: "fresh" (a new draw per chunk, the authors') or "zero" (the deterministic
    zero-noise generation); the noise-steering actor replaces it with its own.
    """

    def __init__(self, policy, preprocessor, postprocessor, steering: Steering, num_envs: int, seed: int = 0,
                 generator_noise: str = "fresh"):
        if generator_noise not in GENERATOR_NOISE_RULES:
            raise ValueError(f"generator_noise must be one of {GENERATOR_NOISE_RULES}, got {generator_noise!r}.")
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.steering = steering
        self.num_envs = num_envs
        self.generator_noise = generator_noise
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        config = policy.config
        self.chunk_steps = config.n_action_steps
        self.history = ObservationHistory(num_envs, config.n_obs_steps)
        self.queue = np.zeros((num_envs, self.chunk_steps, config.action_feature.shape[0]), np.float32)
        self.queue_len = np.zeros(num_envs, np.int64)
        self.queue_pos = np.zeros(num_envs, np.int64)
        self.clock = 0  # env steps since reset(); chunks are cut at multiples of chunk_steps

    @property
    def rl_obs_dim(self) -> int:
        return self.steering.rl_obs_dim

    @property
    def rl_action_dim(self) -> int:
        return self.steering.rl_action_dim

    def reset(self) -> None:
        """Forget every env's queue and restart the chunk clock (histories restart with ``history.start``)."""
        self.queue_len[:] = 0
        self.queue_pos[:] = 0
        self.clock = 0

    def clear(self, mask: np.ndarray) -> None:
        """Drop the remaining actions of envs in ``mask`` (their episode ended)."""
        self.queue_len[mask] = 0
        self.queue_pos[mask] = 0

    def needs_chunk(self) -> np.ndarray:
        return self.queue_pos >= self.queue_len

    @torch.no_grad()
    def observe(self, idx: np.ndarray, explore: bool = False) -> SteeringContext:
        """Steering context (RL observation, latent, base noise) of envs ``idx`` from their histories.

        ``explore``: collecting training data (see :meth:`Steering.observe`); False at evaluation.
        """
        batch = self.preprocessor(self.history.batch(idx, self.device))
        noise = self.policy.sample_noise(len(idx), self.generator)
        if self.generator_noise == "zero":
            noise.zero_()
        return self.steering.observe(batch, noise, explore=explore, generator=self.generator)

    @torch.no_grad()
    def act(self, idx: np.ndarray, ctx: SteeringContext, u: Tensor) -> None:
        """Steer with ``u``, unnormalise the executable actions and queue them for envs ``idx``."""
        chunk = self.steering.act(ctx, u)
        actions = self.postprocessor(chunk[:, self.policy.action_chunk_slice])
        length = self.chunk_steps - self.clock % self.chunk_steps
        self.queue[idx, :length] = actions[:, :length].float().cpu().numpy()
        self.queue_len[idx] = length
        self.queue_pos[idx] = 0

    def pop(self) -> np.ndarray:
        """Next queued action of every env (zeros where the queue is empty: the env is auto-resetting)."""
        actions = np.zeros((self.num_envs, self.queue.shape[-1]), np.float32)
        ready = ~self.needs_chunk()
        actions[ready] = self.queue[ready, self.queue_pos[ready]]
        self.queue_pos[ready] += 1
        self.clock += 1
        return actions


class SteeredRolloutPolicy:
    """A ``RolloutPolicy`` (zprl.evaluation) running the frozen policy + steering with the actor's mean action."""

    def __init__(self, agent: SteeredAgent, actor: Actor | None):
        self.agent = agent
        self.actor = actor
        self._new_round = True

    def reset(self) -> None:
        self.agent.reset()
        self._new_round = True

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        everyone = np.ones(self.agent.num_envs, dtype=bool)
        if self._new_round:
            self.agent.history.start(obs, everyone)
            self._new_round = False
        else:
            self.agent.history.push(obs, everyone)
        idx = np.flatnonzero(self.agent.needs_chunk())
        if len(idx):
            ctx = self.agent.observe(idx, explore=False)
            u = self.actor.deterministic(ctx.rl_obs) if self.actor is not None else ctx.rl_obs.new_zeros(len(idx), 0)
            self.agent.act(idx, ctx, u)
        return self.agent.pop()


@dataclass
class CollectStats:
    """What one :meth:`ChunkCollector.collect` call did."""

    env_steps: int = 0
    transitions: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_successes: list[bool] = field(default_factory=list)
    env_crashes: int = 0
    seconds: float = 0.0
    simulator_seconds: float = 0.0  # inside the vector env's step
    policy_seconds: float = 0.0  # frozen policy, steering and actor (new chunks)
    steering_sums: dict[str, Tensor] = field(default_factory=dict)  # Steering.diagnostics, summed over chunks

    def add_diagnostics(self, diagnostics: dict[str, Tensor]) -> None:
        for key, value in diagnostics.items():
            self.steering_sums[key] = self.steering_sums.get(key, 0.0) + value

    def as_metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        """Episode statistics, and RMS of the latent centre (``z_rms``), of mu (``mu_rms``), of the applied
        perturbation scale * u (``step_rms``) and ``step_to_z_ratio`` (the authors' rule of thumb: ~0.1)."""
        metrics = {f"{prefix}env_steps_per_s": self.env_steps / max(self.seconds, 1e-9),
                   "time/simulator_s": self.simulator_seconds, "time/policy_s": self.policy_seconds,
                   "time/collect_other_s": self.seconds - self.simulator_seconds - self.policy_seconds,
                   f"{prefix}episodes": float(len(self.episode_successes)),
                   f"{prefix}env_crashes": float(self.env_crashes)}
        if self.episode_successes:
            metrics[f"{prefix}success_rate"] = float(np.mean(self.episode_successes))
            metrics[f"{prefix}mean_return"] = float(np.mean(self.episode_returns))
        sums = {key: float(value) for key, value in self.steering_sums.items()}  # one read-back per iteration
        for name, count in (("step", "step_count"), ("z", "z_count"), ("mu", "z_count")):
            if sums.get(count):
                metrics[f"{prefix}{name}_rms"] = math.sqrt(sums[f"{name}_sq"] / sums[count])
        if metrics.get(f"{prefix}z_rms"):
            metrics[f"{prefix}step_to_z_ratio"] = metrics.get(f"{prefix}step_rms", 0.0) / metrics[f"{prefix}z_rms"]
        return metrics


class ChunkCollector:
    """Collects chunk-level (macro) transitions of the steered policy in a NEXT_STEP-autoreset vector env.

    A transition is one chunk: RL obs, u, R = sum_i gamma^i r_i over the k env steps executed, the RL obs
    where the chunk ended, terminal and discount = gamma^k. A chunk stops early when its episode ends.
    terminal is 1 when the episode ended by success termination, and also on a time-limit truncation unless
    ``bootstrap_on_truncation`` (the authors never bootstrap at a done). Transitions of crashed episodes
    (``info["env_crashed"]``) are dropped and counted; the vector env resets that env. Chunks in flight when
    ``collect`` returns are finished by the next call. ``warmup_action`` picks u during warm-up: "zero" (the
    base policy, as in the paper: the steering's ``warmup_u``) or "random" (uniform in (-1, 1)^d).
    """

    def __init__(self, envs: gym.vector.VectorEnv, agent: SteeredAgent, gamma: float, seed: int = 0,
                 warmup_action: str = "zero", bootstrap_on_truncation: bool = False):
        require_next_step_autoreset(envs, "ChunkCollector")
        if warmup_action not in WARMUP_ACTIONS:
            raise ValueError(f"warmup_action must be one of {WARMUP_ACTIONS}, got {warmup_action!r}.")
        if envs.num_envs != agent.num_envs:
            raise ValueError(f"The agent acts in {agent.num_envs} envs but the vector env has {envs.num_envs}.")
        self.envs = envs
        self.agent = agent
        self.gamma = gamma
        self.seed = seed
        self.warmup_action = warmup_action
        self.bootstrap_on_truncation = bootstrap_on_truncation
        # Counters (checkpointed).
        self.env_steps = 0
        self.episodes = 0
        self.env_crashes = 0
        # Per-env state of the episode and of the chunk in flight (rebuilt by a reset, never checkpointed).
        n = envs.num_envs
        self.running = False  # False: the next collect resets every env first
        self.resetting = np.zeros(n, dtype=bool)  # this step is the env's NEXT_STEP auto-reset
        self.episode_return = np.zeros(n)
        self.pending = np.zeros(n, dtype=bool)
        self.pending_reward = np.zeros(n)
        self.pending_steps = np.zeros(n, np.int64)
        self.pending_obs: Tensor | None = None
        self.pending_u: Tensor | None = None

    def _start(self) -> None:
        """Reset every env (seeded by the run seed and the steps so far) and the per-env state."""
        obs, _ = self.envs.reset(seed=self.seed + self.env_steps)
        self.agent.reset()
        self.agent.history.start(obs, np.ones(self.envs.num_envs, dtype=bool))
        self.running = True
        self.resetting[:] = False
        self.episode_return[:] = 0.0
        self.pending[:] = False

    def _choose_u(self, ctx: SteeringContext, actor: Actor, warmup: bool) -> Tensor:
        rl_obs = ctx.rl_obs
        shape = (rl_obs.shape[0], self.agent.rl_action_dim)
        gen = self.agent.generator
        if warmup and self.warmup_action == "zero":
            u = self.agent.steering.warmup_u(ctx, gen)
        elif warmup:
            u = torch.rand(shape, generator=gen, device=rl_obs.device) * 2 - 1
        else:
            u = actor.sample(rl_obs, gen)[0]
        p = self.agent.steering.residual_probability(self.env_steps)
        apply = torch.rand(shape[0], generator=gen, device=rl_obs.device) < p
        return u * apply[:, None]

    def _finish(self, idx: np.ndarray, next_obs: Tensor, terminal: np.ndarray, out: list[Transitions]) -> None:
        """Close the chunks in flight of envs ``idx`` into transitions."""
        if len(idx) == 0:
            return
        device = next_obs.device
        out.append(Transitions(
            obs=self.pending_obs[idx], action=self.pending_u[idx],
            reward=torch.as_tensor(self.pending_reward[idx], dtype=torch.float32, device=device),
            next_obs=next_obs, terminal=torch.as_tensor(terminal, dtype=torch.float32, device=device),
            discount=torch.as_tensor(self.gamma ** self.pending_steps[idx], dtype=torch.float32, device=device)))
        self.pending[idx] = False

    @torch.no_grad()
    def collect(self, num_env_steps: int, actor: Actor,
                warmup: bool = False) -> tuple[Transitions | None, CollectStats]:
        """Step the envs until at least ``num_env_steps`` env steps were taken; returns transitions and stats."""
        start_time = time.perf_counter()
        if not self.running:
            self._start()
        stats = CollectStats()
        out: list[Transitions] = []
        while stats.env_steps < num_env_steps:
            policy_start = time.perf_counter()
            self._plan_chunks(actor, warmup, stats, out)
            stats.policy_seconds += time.perf_counter() - policy_start
            self._step(stats, out)
        stats.seconds = time.perf_counter() - start_time
        stats.transitions = sum(len(t.obs) for t in out)
        batch = Transitions(*(torch.cat(parts) for parts in zip(*out, strict=True))) if out else None
        return batch, stats

    def _plan_chunks(self, actor: Actor, warmup: bool, stats: CollectStats, out: list[Transitions]) -> None:
        """New chunks for the envs whose queue ran out; their previous chunks become transitions."""
        idx = np.flatnonzero(self.agent.needs_chunk() & ~self.resetting)
        if len(idx) == 0:
            return
        ctx = self.agent.observe(idx, explore=True)
        finished = np.flatnonzero(self.pending[idx])  # positions in idx whose previous chunk just ran out
        self._finish(idx[finished], ctx.rl_obs[finished], np.zeros(len(finished)), out)
        u = self._choose_u(ctx, actor, warmup)
        self.agent.act(idx, ctx, u)
        stats.add_diagnostics(self.agent.steering.diagnostics(ctx, u))
        if self.pending_obs is None:
            self.pending_obs = ctx.rl_obs.new_zeros(self.envs.num_envs, ctx.rl_obs.shape[1])
            self.pending_u = u.new_zeros(self.envs.num_envs, u.shape[1])
        self.pending_obs[idx], self.pending_u[idx] = ctx.rl_obs, u
        self.pending[idx] = True
        self.pending_reward[idx] = 0.0
        self.pending_steps[idx] = 0

    def _step(self, stats: CollectStats, out: list[Transitions]) -> None:
        """One vector-env step: rewards into the chunks in flight, episode ends into transitions."""
        n = self.envs.num_envs
        step_start = time.perf_counter()
        obs, reward, terminated, truncated, info = self.envs.step(self.agent.pop())
        stats.simulator_seconds += time.perf_counter() - step_start
        live = ~self.resetting  # envs that really stepped (the others just auto-reset)
        stats.env_steps += int(live.sum())
        self.env_steps += int(live.sum())
        self.pending_reward[live] += self.gamma ** self.pending_steps[live] * reward[live]
        self.pending_steps[live] += 1
        self.episode_return[live] += reward[live]

        ended = live & (terminated | truncated)
        crashed = ended & info_flag(info, "env_crashed", n)
        succeeded = ended & episode_succeeded(terminated, info)
        self.agent.history.push(obs, live)
        self.agent.history.start(obs, self.resetting)
        # A bootstrapped truncation needs the last observation; terminal chunks need no next obs.
        kept = ended & ~crashed
        truncated_kept = kept & ~terminated
        bootstrap = np.flatnonzero(truncated_kept) if self.bootstrap_on_truncation else np.zeros(0, np.int64)
        if len(bootstrap):
            self._finish(bootstrap, self.agent.observe(bootstrap, explore=True).rl_obs, np.zeros(len(bootstrap)), out)
        final = np.flatnonzero(kept & terminated if self.bootstrap_on_truncation else kept)
        self._finish(final, self.pending_obs[final], np.ones(len(final)), out)
        self.pending[crashed] = False

        for i in np.flatnonzero(ended):
            stats.episode_returns.append(float(self.episode_return[i]))
            stats.episode_successes.append(bool(succeeded[i]))
        stats.env_crashes += int(crashed.sum())
        self.episodes += int(ended.sum())
        self.env_crashes += int(crashed.sum())
        self.episode_return[ended] = 0.0
        self.agent.clear(ended)
        self.resetting = ended

    def state_dict(self) -> dict:
        """Counters and RNG state; episodes in flight are not saved (a resumed run starts new episodes)."""
        return {"env_steps": self.env_steps, "episodes": self.episodes, "env_crashes": self.env_crashes,
                "generator": self.agent.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.env_steps, self.episodes, self.env_crashes = state["env_steps"], state["episodes"], state["env_crashes"]
        self.agent.generator.set_state(state["generator"])
        self.running = False  # start fresh episodes on the next collect
