"""Online RL on a frozen pretrained policy as a LightningModule with its own collect-update loop."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from zprl.envs import make_vector_env
from zprl.evaluation import EVAL_SEED_OFFSET, Evaluator
from zprl.online.collector import ChunkCollector, SteeredAgent, SteeredRolloutPolicy
from zprl.online.replay_buffer import ReplayBuffer
from zprl.online.sac import SAC, SACConfig
from zprl.online.steering import make_steering
from zprl.policy_io import check_policy_matches_env, env_kwargs_for, load_policy

ONLINE_CHECKPOINT_KEY = "zprl_online"
CHECKPOINT_FORMAT = 2  # 2: vectorised critic ensemble and the authors' SAC (2026-11-28)


class FrozenPolicy(NamedTuple):
    """The pretrained policy and its processors; kept outside the module's parameters and checkpoints."""

    policy: Any
    preprocessor: Any
    postprocessor: Any


class OnlineRLModule(L.LightningModule):
    """Steers a frozen pretrained policy with SAC: ZPRL (latent residual) or a baseline, in a vector env.

    Each training step is one iteration: collect ``env_steps_per_iter`` env steps chunk by chunk with
    the steered policy, store the macro transitions, then run ``utd_ratio`` SAC updates per collected
    chunk once ``warmup_transitions`` chunks were collected. Metrics are logged against env steps (each logger's step
    axis is the env-step count), with a deterministic evaluation at the start, every
    ``eval_every_env_steps`` and at the end. Training stops after ``total_env_steps``; run it with
    ``max_steps=-1`` and a ModelCheckpoint (e.g. ``train_time_interval``) for resumable runs. A frozen base
    (steering "none") has nothing to learn: it is evaluated once, at env step 0, and stops, since its
    evaluation is deterministic (fixed episode seeds and generator noise) and a later one would repeat it.

    Args:
        policy_path: LeRobot-format policy folder (or pretraining .ckpt), see ``zprl.policy_io.load_policy``.
        task: zprl task name (``zprl.envs.TASKS``).
        steering: "latent" (ZPRL), "action" (action residual), "noise" (DSRL) or "none" (base policy).
        steering_scale: bound of the perturbation (lambda for latent, lambda_a for action, noise bound) of this
            run; None: ``steering_scales[steering]``.
        steering_scales: the bound per steering when ``steering_scale`` is None, so a task overlay can set every
            method's scale and the method overlays stay task-free; missing entries take the authors' values
            (latent 0.2 in raw z units, action 0.1, noise 1.5).
        base_conditioning: what conditions the generator of the unsteered base ("latent": decode(mu); "raw":
            the embedding e). None: "raw" for the action residual on a policy whose generator trained on e
            (the authors' action residual steers the policy without the VIB), else "latent". Latent steering
            with "raw" is the no-bottleneck ablation on the same network (residual on e; conf/methods/zprl_raw.yaml).
        latent_centre: latent steering only: "sample" (z_s = mu + sigma * eps while collecting, mu at
            evaluation; the authors') or "mean" (mu always).
        noise_steps: noise steering only: noise steps the actor picks, tiled over the horizon (authors: 1).
        generator_noise: the generator's initial noise for every method's base chunks: "fresh" (a new draw per
            chunk; the authors') or "zero" (deterministic zero-noise generation). Logged with the params.
        bootstrap_on_truncation: bootstrap the TD target at a time-limit truncation (authors: never).
        action_schedule_fraction: fraction of ``total_env_steps`` over which the action residual's
            application probability ramps from 0 to 1 during collection (0: always; only for
            steering="action"), so the schedule scales with the budget (authors: 5 %).
        num_envs / asynchronous / max_episode_steps: training vector env (subprocesses when asynchronous).
        total_env_steps: training budget in env steps.
        env_steps_per_iter: env steps collected per training step (at least).
        utd_ratio: SAC updates per collected chunk.
        warmup_transitions: chunk transitions collected before the first update (authors: 2000, i.e.
            8000 env steps at 4 actions per chunk); the actor's u during warm-up is ``warmup_action``
            ("zero": the base policy, "random": uniform).
        buffer_capacity: replay buffer size in chunks, stored on the training device.
        eval_every_env_steps / eval_episodes / eval_num_envs: periodic deterministic evaluation.
        seed: seeds network init, env resets, exploration and sampling.
        sac: SAC hyper-parameters (``SACConfig`` fields; ``gamma`` is per env step).
        method_name: label of the method in comparisons (default: the steering name).
    """

    def __init__(
        self,
        policy_path: str,
        task: str = "pusht",
        steering: Literal["latent", "action", "noise", "none"] = "latent",
        steering_scale: float | None = None,
        steering_scales: dict[str, float] | None = None,
        base_conditioning: Literal["latent", "raw"] | None = None,
        latent_centre: Literal["sample", "mean"] = "sample",
        noise_steps: int = 1,
        generator_noise: Literal["fresh", "zero"] = "fresh",
        bootstrap_on_truncation: bool = False,
        action_schedule_fraction: float = 0.0,
        num_envs: int = 4,
        asynchronous: bool | None = None,
        max_episode_steps: int | None = None,
        total_env_steps: int = 100_000,
        env_steps_per_iter: int = 1_000,
        utd_ratio: float = 1.0,
        warmup_transitions: int = 2_000,
        warmup_action: Literal["zero", "random"] = "zero",
        buffer_capacity: int = 1_000_000,
        eval_every_env_steps: int = 10_000,
        eval_episodes: int = 50,
        eval_num_envs: int | None = None,
        seed: int = 0,
        sac: SACConfig | dict | None = None,
        method_name: str | None = None,
    ):
        super().__init__()
        sac_config = sac if isinstance(sac, SACConfig) else SACConfig(**(sac or {}))
        self.save_hyperparameters(ignore=["sac"], logger=False)  # the CLI logs the whole config (zprl.tracking)
        self.hparams.sac = asdict(sac_config)  # a plain dict keeps checkpoints loadable with weights_only
        self.method_name = method_name or steering
        for name in ("total_env_steps", "env_steps_per_iter", "eval_every_env_steps", "eval_episodes", "num_envs",
                     "buffer_capacity", "noise_steps"):
            if getattr(self.hparams, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self.hparams, name)}.")
        if utd_ratio < 0 or warmup_transitions < 0:
            raise ValueError(f"Need utd_ratio >= 0 and warmup_transitions >= 0; got {utd_ratio}, {warmup_transitions}.")
        self.automatic_optimization = False

        self.frozen = FrozenPolicy(*load_policy(policy_path))
        if not 0.0 <= action_schedule_fraction <= 1.0:
            raise ValueError(f"action_schedule_fraction must be in [0, 1], got {action_schedule_fraction}.")
        self.steering = self._make_steering(self.frozen.policy)
        self.obs_dim = self.steering.rl_obs_dim
        self.action_dim = self.steering.rl_action_dim
        self.sac_config = sac_config
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.sac = (SAC(self.obs_dim, self.action_dim, sac_config, critic_action=self.steering.critic_action)
                        if self.steering.trainable else None)

        # Built on the training device in on_fit_start.
        self.envs = self.eval_envs = self.collector = self.buffer = self.train_generator = None
        self.next_eval_at = 0
        self.last_eval_at = -1
        self.num_updates = 0
        self.transitions = 0  # chunk transitions collected (the warm-up counts these)
        self.last_timings: dict[str, float] = {}  # seconds per phase of the last iteration (time/* metrics)
        self._restored: dict | None = None

    def _make_steering(self, policy):
        hp = self.hparams
        schedule_steps = round(hp.action_schedule_fraction * hp.total_env_steps)
        scale = hp.steering_scale if hp.steering_scale is not None else (hp.steering_scales or {}).get(hp.steering)
        return make_steering(hp.steering, policy, scale, hp.base_conditioning, schedule_steps, hp.latent_centre,
                             hp.noise_steps)

    def env_kwargs(self) -> dict:
        """Settings of the training and evaluation envs: the policy's cameras and the episode limit."""
        return {**env_kwargs_for(self.frozen.policy.config), "max_episode_steps": self.hparams.max_episode_steps}

    # -- setup ----------------------------------------------------------------------------------------
    def train_dataloader(self):
        """Iteration indices; the loop ends by itself after ``total_env_steps`` (``trainer.should_stop``)."""
        return _Iterations()

    def configure_optimizers(self):
        return self.sac.configure_optimizers() if self.sac is not None else None

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise RuntimeError("OnlineRLModule runs on one device; scale collection with num_envs instead of "
                               "several Lightning processes (use devices=1).")
        hp = self.hparams
        if self.device != next(self.frozen.policy.parameters()).device:
            self.frozen = FrozenPolicy(*load_policy(hp.policy_path, device=self.device))
            self.steering = self._make_steering(self.frozen.policy)
        env_kwargs = {**self.env_kwargs(), "asynchronous": hp.asynchronous}
        self.envs = make_vector_env(hp.task, hp.num_envs, **env_kwargs)
        check_policy_matches_env(self.frozen.policy.config, self.envs.single_observation_space,
                                 self.envs.single_action_space)
        self.eval_envs = make_vector_env(hp.task, hp.eval_num_envs or hp.num_envs, **env_kwargs)
        self.collector = ChunkCollector(self.envs, self._agent(hp.num_envs, hp.seed), self.sac_config.gamma,
                                        seed=hp.seed, warmup_action=hp.warmup_action,
                                        bootstrap_on_truncation=hp.bootstrap_on_truncation)
        self.train_generator = torch.Generator(self.device).manual_seed(hp.seed + 1)
        if self.sac is not None:
            self.buffer = ReplayBuffer(hp.buffer_capacity, self.obs_dim, self.action_dim, self.device)
        if self._restored is not None:
            self._restore(self._restored)

    def teardown(self, stage: str) -> None:
        for envs in (self.envs, self.eval_envs):
            if envs is not None:
                envs.close()
        self.envs = self.eval_envs = None

    # -- the loop -------------------------------------------------------------------------------------
    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    def training_step(self, batch: int, batch_idx: int) -> None:
        hp = self.hparams
        if self.env_steps >= hp.total_env_steps:  # resumed a finished run
            self.trainer.should_stop = True
            return
        if self.sac is None:  # a frozen base: one evaluation stands for every env step
            self.evaluate()
            self.trainer.should_stop = True
            return
        if self.env_steps >= self.next_eval_at:
            self.evaluate()
        transitions, stats = self.collector.collect(hp.env_steps_per_iter, self.sac.actor,
                                                    warmup=self.transitions < hp.warmup_transitions)
        self.transitions += stats.transitions
        metrics = stats.as_metrics("rollout/")
        buffer_start = time.perf_counter()
        if transitions is not None:
            self.buffer.add(transitions)
        update_start = time.perf_counter()
        if self.transitions >= hp.warmup_transitions and len(self.buffer) >= self.sac_config.batch_size:
            metrics.update(self._update(math.ceil(hp.utd_ratio * stats.transitions)))
        metrics["time/buffer_s"] = update_start - buffer_start
        metrics["time/update_s"] = time.perf_counter() - update_start
        metrics["train/buffer_size"] = float(len(self.buffer))
        metrics.update({"env_steps": float(self.env_steps), "train/updates": float(self.num_updates),
                        "rollout/total_transitions": float(self.transitions),
                        "rollout/total_episodes": float(self.collector.episodes),
                        "rollout/total_env_crashes": float(self.collector.env_crashes)})
        log_start = time.perf_counter()
        self._log(metrics)
        self.last_timings = {**{k: v for k, v in metrics.items() if k.startswith("time/")},
                             "time/log_s": time.perf_counter() - log_start}
        if self.env_steps >= hp.total_env_steps:
            self.evaluate()
            self.trainer.should_stop = True

    def _update(self, num_updates: int) -> dict[str, float]:
        """``num_updates`` SAC updates on replay samples; metrics averaged over the updates that have them.

        Metrics stay on the device until the end, so the loop syncs with the host once per iteration.
        """
        optimizers = self.optimizers()
        totals: dict[str, list] = {}
        for _ in range(num_updates):
            batch = self.buffer.sample(self.sac_config.batch_size, self.train_generator)
            for key, value in self.sac.update(batch, optimizers, self.manual_backward, self.train_generator).items():
                totals.setdefault(key, []).append(value)
        self.num_updates += num_updates
        if not totals:
            return {}
        keys = list(totals)
        means = torch.stack([torch.stack(totals[key]).mean() if key != "q_abs_max" else torch.stack(totals[key]).max()
                             for key in keys]).tolist()
        metrics = dict(zip(keys, means, strict=True))
        self.sac.check_divergence(metrics)
        return {f"train/{key}": value for key, value in metrics.items()}

    def _agent(self, num_envs: int, seed: int) -> SteeredAgent:
        return SteeredAgent(*self.frozen, self.steering, num_envs, seed=seed,
                            generator_noise=self.hparams.generator_noise)

    def rollout_policy(self, num_envs: int) -> SteeredRolloutPolicy:
        """Deterministic steered policy (actor mean) for ``num_envs`` envs, reproducible across calls."""
        agent = self._agent(num_envs, self.hparams.seed + EVAL_SEED_OFFSET)
        return SteeredRolloutPolicy(agent, self.sac.actor if self.sac is not None else None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Evaluate now (once per env-step count), log ``eval/*`` and schedule the next evaluation."""
        hp = self.hparams
        if self.last_eval_at == self.env_steps:
            return {}
        evaluator = Evaluator(self.eval_envs, hp.eval_episodes, seed=hp.seed + EVAL_SEED_OFFSET, progress=False)
        result = evaluator.evaluate(self.rollout_policy(self.eval_envs.num_envs))
        metrics = {**result.as_metrics("eval/"), "env_steps": float(self.env_steps)}
        self._log(metrics)
        self.last_eval_at = self.env_steps
        self.next_eval_at = (self.env_steps // hp.eval_every_env_steps + 1) * hp.eval_every_env_steps
        rank_zero_info(f"[{self.method_name}] env step {self.env_steps}: eval success {result.success_rate:.2f} "
                       f"over {result.num_episodes} episodes")
        return metrics

    def _log(self, metrics: dict[str, float]) -> None:
        """Log to every logger with env steps as the step axis; mirror a few values to callbacks / progress bar."""
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.env_steps)
        shown = {k: v for k, v in metrics.items() if k in ("env_steps", "eval/success_rate", "rollout/success_rate")}
        self.log_dict(shown, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what the weights and optimiser states do not hold: buffer, counters and generator states."""
        checkpoint[ONLINE_CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "policy_path": str(self.hparams.policy_path),
            "transitions": self.transitions,
            "num_critic_updates": self.sac.num_critic_updates if self.sac is not None else 0,
            "collector": self.collector.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "train_generator": self.train_generator.get_state(),
            "next_eval_at": self.next_eval_at,
            "last_eval_at": self.last_eval_at,
            "num_updates": self.num_updates,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if ONLINE_CHECKPOINT_KEY not in checkpoint:
            raise KeyError(f"Not an OnlineRLModule checkpoint (no {ONLINE_CHECKPOINT_KEY!r} entry).")
        if checkpoint[ONLINE_CHECKPOINT_KEY].get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                "This online checkpoint was written by zprl before 2026-11-28 (per-critic MLPs and the earlier SAC); "
                "its weights do not fit the vectorised critic ensemble and the authors' SAC. Start the run anew "
                "without --ckpt_path (the pretrained policy is unaffected).")
        self._restored = checkpoint[ONLINE_CHECKPOINT_KEY]
        if self.collector is not None:  # strategies that restore after setup
            self._restore(self._restored)

    def _restore(self, state: dict) -> None:
        if state["policy_path"] != str(self.hparams.policy_path):
            rank_zero_info(f"Resuming a run trained on {state['policy_path']} with policy_path="
                           f"{self.hparams.policy_path}; make sure it is the same policy.")
        self.collector.load_state_dict(state["collector"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.train_generator.set_state(state["train_generator"])
        self.next_eval_at, self.last_eval_at = state["next_eval_at"], state["last_eval_at"]
        self.num_updates = state["num_updates"]
        self.transitions = state["transitions"]
        if self.sac is not None:
            self.sac.num_critic_updates = state["num_critic_updates"]
        self._restored = None


class _Iterations:
    """Endless iteration indices: the module decides when the online run is over."""

    def __iter__(self):
        iteration = 0
        while True:
            yield iteration
            iteration += 1
