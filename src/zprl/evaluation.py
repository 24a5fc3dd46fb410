"""Policy evaluation in Gymnasium vector envs: success rate, return, length and action smoothness."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from zprl.envs.vector import episode_succeeded, info_flag, require_next_step_autoreset

log = logging.getLogger(__name__)

# Evaluation episodes start at this seed (plus a run's seed): disjoint from the training resets, which count up
# from the run's seed by env steps. Latent-analysis rollouts (zprl.online.analysis) start at their own.
EVAL_SEED_OFFSET = 100_000
ANALYSIS_SEED_OFFSET = 200_000


@runtime_checkable
class RolloutPolicy(Protocol):
    """Anything that acts in a vector env: batched env observations in, batched env actions out."""

    def reset(self) -> None:
        """Forget all per-episode state (observation queues, action chunks); called before each round."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions of shape (num_envs, action_dim) in env units for observations batched over num_envs."""


@runtime_checkable
class RolloutSource(Protocol):
    """A module whose current policy can be rolled out (PretrainModule, OnlineRLModule): RolloutEvalCallback's hook."""

    def rollout_policy(self, num_envs: int) -> RolloutPolicy:
        """The current policy acting in ``num_envs`` lockstep envs (deterministic where the method allows)."""

    def env_kwargs(self) -> dict:
        """``make_vector_env`` settings the policy needs (``policy_io.env_kwargs_for``: cameras, image size)."""


def smoothness_metrics(actions: np.ndarray) -> dict[str, float]:
    """Smoothness of one episode's actions (T, A).

    ``jerk``: mean over t and action dims of the squared third finite difference (NaN when T < 4);
    ``action_delta``: mean |a_t - a_{t-1}| (NaN when T < 2). Differences are per control step.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2:
        raise ValueError(f"actions must have shape (T, action_dim), got {actions.shape}.")
    steps = actions.shape[0]
    jerk = float(np.mean(np.diff(actions, n=3, axis=0) ** 2)) if steps >= 4 else math.nan
    delta = float(np.mean(np.abs(np.diff(actions, axis=0)))) if steps >= 2 else math.nan
    return {"jerk": jerk, "action_delta": delta}


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class EvalResult:
    """Aggregate and per-episode outcome of an evaluation; build it with :meth:`from_episodes`."""

    success_rate: float
    mean_return: float
    mean_length: float
    jerk: float
    action_delta: float
    num_episodes: int
    env_crashes: int
    successes: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    episode_jerk: list[float] = field(default_factory=list)
    episode_action_delta: list[float] = field(default_factory=list)
    video_paths: list[str] = field(default_factory=list)

    @classmethod
    def from_episodes(cls, successes: list[bool], returns: list[float], lengths: list[int],
                      episode_jerk: list[float], episode_action_delta: list[float], env_crashes: int = 0,
                      video_paths: list[str] | None = None) -> EvalResult:
        """Aggregate per-episode lists (jerk and delta average over the episodes where they are defined)."""
        if not successes:
            raise ValueError("EvalResult needs at least one episode.")
        return cls(
            success_rate=float(np.mean(successes)), mean_return=float(np.mean(returns)),
            mean_length=float(np.mean(lengths)), jerk=_finite_mean(episode_jerk),
            action_delta=_finite_mean(episode_action_delta), num_episodes=len(successes), env_crashes=env_crashes,
            successes=list(successes), returns=list(returns), lengths=list(lengths),
            episode_jerk=list(episode_jerk), episode_action_delta=list(episode_action_delta),
            video_paths=list(video_paths or []),
        )

    def as_metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Scalar metrics for a logger, e.g. ``{"eval/success_rate": 0.8, ...}``."""
        names = ("success_rate", "mean_return", "mean_length", "jerk", "action_delta", "num_episodes", "env_crashes")
        return {f"{prefix}{name}": float(getattr(self, name)) for name in names}


class Evaluator:
    """Runs a :class:`RolloutPolicy` for ``num_episodes`` episodes in rounds of ``num_envs`` lockstep episodes.

    Episode ``i`` starts from ``reset(seed=seed + i)``, so results are reproducible for a deterministic
    policy. Each round resets all envs, calls ``policy.reset()`` and steps until every env of the round
    is done; an env that finished earlier keeps being stepped (the vector env auto-resets it) but its
    transitions are ignored. Success: the episode terminated with ``info["is_success"]`` (see
    :func:`zprl.envs.vector.episode_succeeded`, the collector's rule too). With ``video_dir``, the
    first episode of each round in env 0 is rendered (envs need ``render_mode="rgb_array"``; the vector
    env renders all its envs, so video slows evaluation) and written as mp4 (gif if no encoder works).

    ``progress``: ``True`` draws a tqdm bar over episodes (with the env steps taken), ``False`` nothing, and a
    callable ``(episodes finished, env steps taken)`` is called after every vector-env step (see
    ``zprl.progress.rich_eval_progress`` for a task inside Lightning's progress bar).
    """

    def __init__(self, envs: gym.vector.VectorEnv, num_episodes: int, seed: int = 0,
                 progress: bool | Callable[[int, int], None] = True, video_dir: str | None = None,
                 video_fps: int = 20):
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
        require_next_step_autoreset(envs, "Evaluator")
        self.envs = envs
        self.num_episodes = num_episodes
        self.seed = seed
        self.progress = progress
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.video_fps = video_fps

    def evaluate(self, policy: RolloutPolicy) -> EvalResult:
        """Roll out ``policy`` and return aggregate and per-episode metrics."""
        num_envs = self.envs.num_envs
        episodes: list[dict] = []
        video_paths: list[str] = []
        self._env_steps = 0
        with self._progress() as report:
            for first in range(0, self.num_episodes, num_envs):
                num_active = min(num_envs, self.num_episodes - first)
                round_episodes, frames = self._run_round(policy, first, num_active, report)
                episodes.extend(round_episodes)
                if frames:
                    video_paths.append(self._write_video(frames, first))
        return EvalResult.from_episodes(
            successes=[ep["success"] for ep in episodes], returns=[ep["return"] for ep in episodes],
            lengths=[ep["length"] for ep in episodes], episode_jerk=[ep["jerk"] for ep in episodes],
            episode_action_delta=[ep["action_delta"] for ep in episodes],
            env_crashes=sum(ep["crashed"] for ep in episodes), video_paths=video_paths,
        )

    def _progress(self):
        """A context giving the per-step progress callable (or None) for this evaluation."""
        if callable(self.progress):
            return nullcontext(self.progress)
        if self.progress:
            from zprl.progress import tqdm_eval_progress

            return tqdm_eval_progress(self.num_episodes)
        return nullcontext(None)

    def _run_round(self, policy: RolloutPolicy, first: int, num_active: int,
                   report: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[np.ndarray]]:
        """One lockstep round; envs ``num_active..num_envs-1`` only fill the batch and are ignored."""
        num_envs = self.envs.num_envs
        obs, _ = self.envs.reset(seed=[self.seed + first + i for i in range(num_envs)])
        policy.reset()
        running = np.arange(num_envs) < num_active
        success = np.zeros(num_envs, dtype=bool)
        crashed = np.zeros(num_envs, dtype=bool)
        returns = np.zeros(num_envs)
        actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        record = self.video_dir is not None
        frames = [self._render_env0()] if record else []
        while running.any():
            action = np.asarray(policy.act(obs))
            expected = (num_envs, *self.envs.single_action_space.shape)
            if action.shape != expected:
                raise ValueError(f"policy.act returned actions of shape {action.shape}, expected {expected} "
                                 "(num_envs, action_dim).")
            obs, reward, terminated, truncated, info = self.envs.step(action)
            for i in np.flatnonzero(running):
                actions[i].append(action[i])
                returns[i] += reward[i]
            success |= running & episode_succeeded(terminated, info)
            crashed |= running & info_flag(info, "env_crashed", num_envs)
            if record and running[0]:
                frames.append(self._render_env0())
            self._env_steps += int(running.sum())
            running &= ~(terminated | truncated)
            if report is not None:
                report(first + num_active - int(running.sum()), self._env_steps)
        return [
            {"success": bool(success[i]), "return": float(returns[i]), "length": len(actions[i]),
             "crashed": bool(crashed[i]), **smoothness_metrics(np.stack(actions[i]))}
            for i in range(num_active)
        ], frames

    def _render_env0(self) -> np.ndarray:
        frame = self.envs.render()[0]
        if frame is None:
            raise ValueError("Evaluator(video_dir=...) needs envs built with render_mode='rgb_array'.")
        return np.asarray(frame, dtype=np.uint8)

    def _write_video(self, frames: list[np.ndarray], episode: int) -> str:
        import imageio.v3 as iio

        self.video_dir.mkdir(parents=True, exist_ok=True)
        video = np.stack(frames)
        video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]  # H.264 (yuv420p) wants even sizes
        path = self.video_dir / f"episode_{episode:04d}.mp4"
        try:
            iio.imwrite(path, video, plugin="pyav", codec="libx264", fps=self.video_fps)
        except Exception as err:  # no H.264 encoder in this PyAV build: fall back to a gif
            log.warning("mp4 encoding failed (%s); writing a gif instead.", err)
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
            iio.imwrite(path, video, plugin="pillow", duration=1000 / self.video_fps, loop=0)
        return str(path)
