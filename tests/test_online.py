"""Online RL: steering invariants, replay buffer, SAC, chunk collection and the resumable Lightning loop."""

import copy
import csv
import math

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from zprl.envs import make_env, make_vector_env
from zprl.evaluation import Evaluator
from zprl.evaluation_callback import RolloutEvalCallback
from zprl.online.collector import ChunkCollector, SteeredAgent, SteeredRolloutPolicy
from zprl.online.module import OnlineRLModule
from zprl.online.replay_buffer import ReplayBuffer, Transitions
from zprl.online.sac import SAC, CriticDivergenceError, SACConfig
from zprl.online.steering import ActionSteering, LatentSteering, NoiseSteering, make_steering
from zprl.policy_io import load_policy


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frozen(policy_dir):
    return load_policy(policy_dir)


@pytest.fixture(scope="module")
def obs_batch(frozen):
    """A normalised observation-history batch of 5 PushT states."""
    env = make_env("pusht")
    frames = [env.reset(seed=s)[0] for s in range(5)]
    batch = {k: torch.as_tensor(np.stack([f[k] for f in frames]))[:, None].repeat(1, 2, 1) for k in frames[0]}
    return frozen[1](batch)


def _context(policy, steering, obs_batch, seed=0):
    noise = policy.sample_noise(5, torch.Generator().manual_seed(seed))
    return steering.observe(obs_batch, noise), noise


# -- steering ------------------------------------------------------------------------------------------

def test_zero_residual_gives_the_base_policy_chunk(frozen, obs_batch):
    policy = frozen[0]
    noise = policy.sample_noise(5, torch.Generator().manual_seed(0))
    # The base policy's own eval path: LeRobot conditioning through the bottleneck (mean latent).
    base = policy.diffusion.conditional_sample(5, policy.diffusion._prepare_global_conditioning(obs_batch), noise=noise)
    for steering in (LatentSteering(policy, 2.0), ActionSteering(policy, 0.5)):
        ctx = steering.observe(obs_batch, noise)
        sac = SAC(steering.rl_obs_dim, steering.rl_action_dim)
        u = sac.actor.deterministic(ctx.rl_obs)
        assert torch.equal(u, torch.zeros_like(u)), "a fresh actor must output exactly zero"
        assert torch.equal(steering.act(ctx, u), base), steering.name
    zero_noise = torch.zeros_like(noise)
    expected = policy.diffusion.conditional_sample(5, policy.diffusion._prepare_global_conditioning(obs_batch),
                                                   noise=zero_noise)
    steering = NoiseSteering(policy, 1.5)
    ctx = steering.observe(obs_batch, noise)
    assert torch.equal(steering.act(ctx, torch.zeros(5, steering.rl_action_dim)), expected)
    # The raw base: the action residual of the authors steers the generator conditioned on e.
    raw = ActionSteering(policy, 0.5, conditioning="raw")
    ctx = raw.observe(obs_batch, noise)
    torch.testing.assert_close(ctx.base_chunk, policy.generate(ctx.latent.e, noise))


def test_perturbations_respect_their_bound(frozen, obs_batch):
    policy = frozen[0]
    g = torch.Generator().manual_seed(1)
    latent, action = LatentSteering(policy, 0.3), ActionSteering(policy, 0.2)
    noise_steering = NoiseSteering(policy, 1.5, noise_steps=2)

    ctx, _ = _context(policy, latent, obs_batch)
    u = torch.rand(5, latent.rl_action_dim, generator=g) * 2 - 1
    z = latent.steered_latent(ctx, u)
    assert (z - ctx.latent.mu).abs().max() <= 0.3 + 1e-4
    torch.testing.assert_close(latent.steered_latent(ctx, torch.ones_like(u)) - ctx.latent.mu,
                               torch.full_like(u, 0.3), atol=1e-4, rtol=0)

    ctx, _ = _context(policy, action, obs_batch)
    u = torch.rand(5, action.rl_action_dim, generator=g) * 2 - 1
    chunk = action.act(ctx, u)
    steps = policy.action_chunk_slice
    diff = chunk - ctx.base_chunk
    assert diff[:, steps].abs().max() <= 0.2 + 1e-6 and diff[:, steps].abs().max() > 0
    assert chunk[:, steps].abs().max() <= 1.0  # min-max normalised actions are clamped
    outside = torch.ones(chunk.shape[1], dtype=torch.bool)
    outside[steps] = False
    assert torch.equal(chunk[:, outside], ctx.base_chunk[:, outside])

    ctx, _ = _context(policy, noise_steering, obs_batch)
    u = torch.rand(5, noise_steering.rl_action_dim, generator=g) * 2 - 1
    assert noise_steering.rl_action_dim == 2 * 2
    initial = noise_steering.initial_noise(ctx, u)
    assert initial.shape == ctx.noise.shape and initial.abs().max() <= 1.5
    # Two noise steps tiled over the horizon of 8: each repeated over 4 consecutive steps.
    torch.testing.assert_close(initial[:, :4], 1.5 * u[:, None, :2].expand(5, 4, 2))
    torch.testing.assert_close(initial[:, 4:], 1.5 * u[:, None, 2:].expand(5, 4, 2))


def test_latent_centre_is_a_posterior_sample_in_collection_and_mu_at_evaluation(frozen, obs_batch):
    policy = frozen[0]
    steering = LatentSteering(policy, 0.2)
    noise = policy.sample_noise(5)
    evaluation = steering.observe(obs_batch, noise, explore=False)
    torch.testing.assert_close(evaluation.centre, evaluation.latent.mu)
    torch.testing.assert_close(evaluation.rl_obs, torch.cat([evaluation.latent.e, evaluation.latent.mu], -1))
    draws = torch.stack([steering.observe(obs_batch, noise, explore=True, generator=torch.Generator().manual_seed(s)
                                          ).centre for s in range(400)])
    latent = evaluation.latent
    torch.testing.assert_close(draws.mean(0), latent.mu, atol=4 * latent.sigma.max().item() / 20, rtol=0)
    torch.testing.assert_close(draws.std(0), latent.sigma, atol=0.0, rtol=0.15)
    assert torch.equal(LatentSteering(policy, 0.2, centre="mean").observe(obs_batch, noise, explore=True).centre,
                       latent.mu)


def test_the_critic_scores_the_perturbed_latent(frozen, obs_batch):
    policy = frozen[0]
    steering = LatentSteering(policy, 0.2)
    ctx = steering.observe(obs_batch, policy.sample_noise(5), explore=True, generator=torch.Generator().manual_seed(0))
    sac = SAC(steering.rl_obs_dim, steering.rl_action_dim, SACConfig(hidden_dims=(16,)), steering.critic_action)
    u = torch.rand(5, steering.rl_action_dim) * 2 - 1
    z_prime = steering.steered_latent(ctx, u)
    torch.testing.assert_close(steering.critic_action(ctx.rl_obs, u), z_prime)
    torch.testing.assert_close(sac.q_values(sac.critic, ctx.rl_obs, u), sac.critic(ctx.rl_obs, z_prime))
    residual_critic = SAC(steering.rl_obs_dim, steering.rl_action_dim, SACConfig(hidden_dims=(16,),
                          critic_input="residual"), steering.critic_action)
    torch.testing.assert_close(residual_critic.q_values(residual_critic.critic, ctx.rl_obs, u),
                               residual_critic.critic(ctx.rl_obs, u))


def test_latent_steering_on_the_raw_embedding_is_the_no_bottleneck_ablation(frozen, obs_batch):
    """conditioning="raw": the same steering as on this network pretrained with bottleneck=False."""
    policy = frozen[0]
    raw = make_steering("latent", policy, 0.3, conditioning="raw")
    without_vib = copy.deepcopy(policy)
    without_vib.diffusion.vib = None
    without_vib.config.bottleneck = False
    ablation = LatentSteering(without_vib, 0.3)
    assert raw.rl_action_dim == ablation.rl_action_dim == policy.config.cond_dim != policy.config.z_dim
    noise = policy.sample_noise(5, torch.Generator().manual_seed(0))
    ctx = raw.observe(obs_batch, noise, explore=True, generator=torch.Generator().manual_seed(1))
    reference = ablation.observe(obs_batch, noise, explore=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ctx.centre, ctx.latent.e) and torch.equal(ctx.rl_obs, reference.rl_obs)
    u = torch.rand(5, raw.rl_action_dim, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.equal(raw.act(ctx, u), ablation.act(reference, u))
    assert (raw.critic_action(ctx.rl_obs, u) - ctx.latent.e).abs().max() <= 0.3 + 1e-5
    # u = 0 is the action residual's base: the generator conditioned on e
    base = ActionSteering(policy, 0.1, conditioning="raw").observe(obs_batch, noise).base_chunk
    assert torch.equal(raw.act(ctx, torch.zeros_like(u)), base)
    joint = copy.deepcopy(policy)
    joint.config.vib_training = "joint"
    with pytest.raises(ValueError, match="trained jointly"):
        make_steering("latent", joint, conditioning="raw")


def test_action_schedule_and_unknown_steering(frozen):
    policy = frozen[0]
    steering = make_steering("action", policy, 0.1, action_schedule_steps=1000)
    assert [steering.residual_probability(s) for s in (0, 250, 1000, 5000)] == [0.0, 0.25, 1.0, 1.0]
    assert make_steering("latent", policy).residual_probability(0) == 1.0
    assert make_steering("latent", policy).scale == 0.2 and steering.conditioning == "raw"  # the authors' defaults
    with pytest.raises(ValueError, match="choose one of"):
        make_steering("latnet", policy)
    with pytest.raises(ValueError, match="only applies to steering='action'"):
        make_steering("latent", policy, action_schedule_steps=10)


# -- replay buffer and SAC -----------------------------------------------------------------------------

def _transitions(n, obs_dim=3, action_dim=2, start=0):
    values = torch.arange(start, start + n, dtype=torch.float32)
    return Transitions(obs=values[:, None].repeat(1, obs_dim), action=values[:, None].repeat(1, action_dim),
                       reward=values, next_obs=values[:, None].repeat(1, obs_dim) + 0.5,
                       terminal=(values % 2), discount=torch.full((n,), 0.9))


def test_replay_buffer_wraps_and_round_trips():
    buffer = ReplayBuffer(5, 3, 2)
    buffer.add(_transitions(3))
    buffer.add(_transitions(4, start=3))  # 7 added into 5 slots: 0 and 1 overwritten
    assert len(buffer) == 5 and buffer.pos == 2
    assert sorted(buffer.storage.reward.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    sample = buffer.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(sample.obs[:, 0], sample.reward) and torch.equal(sample.next_obs[:, 0], sample.reward + 0.5)
    assert set(sample.reward.tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}

    clone = ReplayBuffer(5, 3, 2)
    clone.load_state_dict(buffer.state_dict())
    assert (clone.pos, len(clone)) == (buffer.pos, len(buffer))
    for a, b in zip(clone.storage, buffer.storage, strict=False):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="same buffer_capacity"):
        ReplayBuffer(6, 3, 2).load_state_dict(buffer.state_dict())


def test_sac_update_is_finite_and_detects_divergence():
    torch.manual_seed(0)
    sac = SAC(6, 3, SACConfig(hidden_dims=(32, 32), num_critics=3, critic_subset=2, batch_size=16, policy_freq=1,
                              target_freq=1))
    optimizers = sac.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    batch = Transitions(obs=torch.randn(16, 6, generator=g), action=torch.rand(16, 3, generator=g) * 2 - 1,
                        reward=(torch.rand(16, generator=g) > 0.5).float(), next_obs=torch.randn(16, 6, generator=g),
                        terminal=torch.zeros(16), discount=torch.full((16,), 0.99 ** 4))
    before = [p.clone() for p in sac.critic_target.parameters()]
    metrics = {k: float(v) for k, v in sac.update(batch, optimizers).items()}
    assert set(metrics) >= {"critic_loss", "actor_loss", "alpha", "q_mean", "entropy"}
    assert all(math.isfinite(v) for v in metrics.values())
    moved = zip(before, sac.critic_target.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in moved)  # Polyak moved
    nan_metrics = sac.update(batch._replace(reward=torch.full((16,), float("nan"))), optimizers)
    with pytest.raises(CriticDivergenceError, match="utd_ratio"):
        sac.check_divergence({k: float(v) for k, v in nan_metrics.items()})
    huge = SAC(6, 3, SACConfig(hidden_dims=(32, 32), q_divergence_threshold=10.0, bounded_q=False))
    metrics = huge.update(batch._replace(reward=torch.full((16,), 1e4)), huge.configure_optimizers())
    with pytest.raises(CriticDivergenceError, match="q_divergence_threshold"):
        huge.check_divergence({k: float(v) for k, v in metrics.items()})
    with pytest.raises(ValueError, match="batch_size"):
        SACConfig(batch_size=0)


def test_actor_and_targets_update_at_their_frequencies():
    torch.manual_seed(0)
    sac = SAC(6, 3, SACConfig(hidden_dims=(16,), batch_size=8))  # policy_freq = target_freq = 2
    optimizers = sac.configure_optimizers()
    batch = Transitions(obs=torch.randn(8, 6), action=torch.rand(8, 3), reward=torch.ones(8),
                        next_obs=torch.randn(8, 6),
                        terminal=torch.zeros(8), discount=torch.ones(8))
    actor, target = copy.deepcopy(sac.actor.state_dict()), copy.deepcopy(sac.critic_target.state_dict())
    assert "actor_loss" not in sac.update(batch, optimizers)
    assert all(torch.equal(v, sac.actor.state_dict()[k]) for k, v in actor.items())
    assert all(torch.equal(v, sac.critic_target.state_dict()[k]) for k, v in target.items())
    assert "actor_loss" in sac.update(batch, optimizers)
    assert any(not torch.equal(v, sac.critic_target.state_dict()[k]) for k, v in target.items())


def test_bounded_q_stays_in_the_unit_interval():
    sac = SAC(6, 3, SACConfig(hidden_dims=(16,)))
    q = sac.critic(1e3 * torch.randn(64, 6), 1e3 * torch.randn(64, 3))
    assert q.shape == (2, 64) and q.min() >= 0.0 and q.max() <= 1.0


def test_vectorised_critic_ensemble_equals_per_critic_mlps():
    from zprl.online.sac import CriticEnsemble, mlp

    torch.manual_seed(0)
    ensemble = CriticEnsemble(6, 3, (32, 32), num_critics=4, activation="gelu", bounded=False)
    mlps = [mlp(9, (32, 32), 1, "gelu") for _ in range(4)]
    linears = [*ensemble.hidden, ensemble.out]
    with torch.no_grad():
        for i, critic in enumerate(mlps):
            for layer, linear in zip(linears, [m for m in critic if isinstance(m, torch.nn.Linear)], strict=False):
                linear.weight.copy_(layer.weight[i].T)
                linear.bias.copy_(layer.bias[i, 0])
    obs, action = torch.randn(16, 6), torch.randn(16, 3)
    q = ensemble(obs, action)
    reference = torch.stack([critic(torch.cat([obs, action], -1)).squeeze(-1) for critic in mlps])
    torch.testing.assert_close(q, reference)
    q.sum().backward()
    reference.sum().backward()
    for i, critic in enumerate(mlps):
        for layer, linear in zip(linears, [m for m in critic if isinstance(m, torch.nn.Linear)], strict=False):
            torch.testing.assert_close(layer.weight.grad[i].T, linear.weight.grad)
            torch.testing.assert_close(layer.bias.grad[i, 0], linear.bias.grad)


def test_residual_penalty_keeps_the_steering_near_zero():
    """A critic rewarding large actions pulls the actor's mean away from 0; the residual penalty holds it back."""
    g = torch.Generator().manual_seed(0)
    action = torch.rand(64, 3, generator=g) * 2 - 1
    batch = Transitions(obs=torch.randn(64, 6, generator=g), action=action, reward=action.sum(-1).clamp(min=0),
                        next_obs=torch.randn(64, 6, generator=g), terminal=torch.ones(64), discount=torch.ones(64))

    def residual_after_training(penalty):
        torch.manual_seed(0)
        sac = SAC(6, 3, SACConfig(hidden_dims=(32, 32), batch_size=64, residual_penalty=penalty, policy_freq=1,
                                  actor_lr=1e-3, bounded_q=False))
        optimizers = sac.configure_optimizers()
        for _ in range(100):
            metrics = sac.update(batch, optimizers, generator=torch.Generator().manual_seed(1))
        return float(metrics["residual_abs"])

    free, penalised = residual_after_training(0.0), residual_after_training(10.0)
    assert free > 0.2 and penalised < 0.5 * free, (free, penalised)
    with pytest.raises(ValueError, match="residual_penalty"):
        SACConfig(residual_penalty=-1.0)


# -- collection ----------------------------------------------------------------------------------------

class _CrashAt(gym.Wrapper):
    """Reports a simulator crash (as RobomimicEnv does) at a given step of every episode."""

    def __init__(self, env, step):
        super().__init__(env)
        self.crash_step, self.t = step, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        self.t += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.t == self.crash_step:
            return obs, 0.0, False, True, {**info, "env_crashed": True}
        return obs, reward, terminated, truncated, info


def _collect(frozen, envs, steering="latent", steps=200, seed=0, bootstrap_on_truncation=False):
    steering = make_steering(steering, frozen[0], 0.5)
    agent = SteeredAgent(*frozen, steering, envs.num_envs, seed=seed)
    torch.manual_seed(seed)
    sac = SAC(steering.rl_obs_dim, steering.rl_action_dim, SACConfig(hidden_dims=(32,)))
    collector = ChunkCollector(envs, agent, gamma=0.9, seed=seed, bootstrap_on_truncation=bootstrap_on_truncation)
    batch, stats = collector.collect(steps, sac.actor)
    return collector, batch, stats


@pytest.mark.parametrize("bootstrap_on_truncation", [False, True])
def test_collector_macro_transitions_account_for_every_env_step(frozen, bootstrap_on_truncation):
    # PushT episodes of 10 steps: time-limit truncations mid-chunk (n_action_steps=4).
    envs = make_vector_env("pusht", 3, asynchronous=False, max_episode_steps=10)
    collector, batch, stats = _collect(frozen, envs, steps=100, bootstrap_on_truncation=bootstrap_on_truncation)
    steps_per_transition = torch.round(torch.log(batch.discount) / math.log(0.9)).long()
    assert steps_per_transition.min() >= 1 and steps_per_transition.max() <= 4
    in_flight = collector.pending_steps[collector.pending].sum()
    assert steps_per_transition.sum() + in_flight == stats.env_steps == collector.env_steps >= 100
    assert len(stats.episode_successes) == collector.episodes >= 100 // 10 - 3  # 10-step episodes, 3 may be in flight
    if bootstrap_on_truncation:
        assert batch.terminal.sum() == sum(stats.episode_successes)  # only successes are terminal
    else:
        assert batch.terminal.sum() == len(stats.episode_successes)  # every episode end cuts the bootstrap
    assert batch.obs.shape[1] == LatentSteering(frozen[0]).rl_obs_dim and torch.isfinite(batch.next_obs).all()
    assert {"rollout/z_rms", "rollout/mu_rms", "rollout/step_rms", "rollout/step_to_z_ratio"} <= set(stats.as_metrics())
    # Same seed, same transitions: runs are reproducible on CPU.
    _, again, _ = _collect(frozen, envs, steps=100, bootstrap_on_truncation=bootstrap_on_truncation)
    for a, b in zip(batch, again, strict=False):
        assert torch.equal(a, b)
    envs.close()


def test_collector_drops_crashed_chunks_and_continues(frozen):
    envs = gym.vector.SyncVectorEnv([lambda: _CrashAt(make_env("pusht", max_episode_steps=50), 6)] * 2)
    collector, batch, stats = _collect(frozen, envs, steps=60)
    assert stats.env_crashes == collector.env_crashes == len(stats.episode_successes) >= 8
    assert stats.env_steps >= 60
    steps = torch.round(torch.log(batch.discount) / math.log(0.9)).long()
    # Each 6-step episode is split into chunks of 4 + 2 (aligned) or similar; the crashed chunk is dropped.
    assert steps.sum() + collector.pending_steps[collector.pending].sum() < stats.env_steps
    envs.close()


class _ScriptedOutcomes(gym.Env):
    """PushT-shaped observations; the reset seed fixes how the episode ends: ``PLANS[seed] = (step, outcome)``.

    "fail" terminates without success (no zprl task does, so the collector used to count it as a success);
    unseeded (auto-)resets run on past the test.
    """

    PLANS = {10: (2, "fail"), 11: (4, "crash"), 12: (9, "success"), 13: (3, "success")}
    observation_space = gym.spaces.Dict({"observation.state": gym.spaces.Box(-1, 1, (2,), np.float32),
                                         "observation.environment_state": gym.spaces.Box(-1, 1, (16,), np.float32)})
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.last_step, self.outcome = self.PLANS.get(seed, (100, "fail"))
        self.t = 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.t += 1
        done = self.t == self.last_step
        success = done and self.outcome == "success"
        if done and self.outcome == "crash":
            return self._obs(), 0.0, False, True, {"is_success": False, "env_crashed": True}
        return self._obs(), float(success), done, False, {"is_success": success}

    def _obs(self):
        return {key: np.full(space.shape, 0.1 * self.t, np.float32) for key, space in self.observation_space.items()}


def test_collector_and_evaluator_count_the_same_successes(frozen):
    # seeds 10..13: fails at step 2, crashes at step 4, cut by the 5-step limit, succeeds at step 3
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(_ScriptedOutcomes(), 5)] * 4)
    agent = SteeredAgent(*frozen, make_steering("none", frozen[0], 0.0), 4)
    result = Evaluator(envs, num_episodes=4, seed=10, progress=False).evaluate(SteeredRolloutPolicy(agent, None))
    assert result.successes == [False, False, False, True] and result.env_crashes == 1
    # The collector resets the envs with seeds 10..13 too; 17 live env steps end exactly those four episodes
    # (in the order fail, success, crash, time limit).
    _, _, stats = _collect(frozen, envs, steps=17, seed=10)
    assert stats.episode_successes == [False, True, False, False] and stats.env_crashes == 1
    envs.close()


def test_steered_rollout_with_zero_actor_equals_base(frozen):
    envs = make_vector_env("pusht", 2, asynchronous=False)
    actions = {}
    for name in ("none", "latent", "action"):
        steering = make_steering(name, frozen[0], 0.5, conditioning="latent")
        actor = SAC(steering.rl_obs_dim, steering.rl_action_dim).actor if steering.trainable else None
        rollout = SteeredRolloutPolicy(SteeredAgent(*frozen, steering, 2, seed=3), actor)
        obs, _ = envs.reset(seed=0)
        rollout.reset()
        taken = []
        for _ in range(10):
            taken.append(rollout.act(obs))
            obs, *_ = envs.step(taken[-1])
        actions[name] = np.stack(taken)
    np.testing.assert_array_equal(actions["latent"], actions["none"])
    np.testing.assert_array_equal(actions["action"], actions["none"])
    envs.close()


# -- the Lightning loop --------------------------------------------------------------------------------

def _module(policy_dir, total_env_steps):
    return OnlineRLModule(
        policy_path=str(policy_dir), task="pusht", steering="latent", steering_scale=1.0, num_envs=2,
        asynchronous=False, max_episode_steps=20, total_env_steps=total_env_steps, env_steps_per_iter=32,
        utd_ratio=0.5, warmup_transitions=4, buffer_capacity=100, eval_every_env_steps=64, eval_episodes=2,
        seed=0, sac={"hidden_dims": (32, 32), "batch_size": 8})


def _trainer(tmp_path, callbacks=()):
    return L.Trainer(max_steps=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path,
                     logger=CSVLogger(tmp_path, name="csv"),
                     callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), *callbacks])


class _Snapshot(Callback):
    """Records the resumable state when training (re)starts."""

    def on_train_start(self, trainer, module):
        self.state = _state(module)


def _state(module):
    return {"env_steps": module.env_steps, "buffer": len(module.buffer), "updates": module.num_updates,
            "actor": {k: v.clone() for k, v in module.sac.actor.state_dict().items()},
            "optim": copy.deepcopy([o.state_dict() for o in module.trainer.optimizers])}


def test_rollout_eval_callback_serves_the_online_module(policy_dir):
    module = _module(policy_dir, total_env_steps=64)
    callback = RolloutEvalCallback("pusht", num_episodes=3, num_envs=2, max_episode_steps=5, progress=False)
    try:
        result = callback.evaluate(module)
    finally:
        callback.teardown(None, module, "fit")
    assert result.num_episodes == 3 and result.lengths == [5, 5, 5]
    assert module.training  # restored after the rollouts


def test_fit_checkpoints_and_resumes_exactly(policy_dir, tmp_path):
    module = _module(policy_dir, total_env_steps=64)
    trainer = _trainer(tmp_path)
    trainer.fit(module)
    assert 64 <= module.env_steps < 64 + 2 and module.num_updates > 0
    assert trainer.global_step > 0 and module.frozen.policy.training is False
    saved = _state(module)
    assert not any(k.startswith(("frozen", "policy")) for k in module.state_dict())

    # Metrics are logged with env steps as the step axis; evaluation ran at 0 and at the end.
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["step"]) == float(r["env_steps"]) for r in rows if r.get("env_steps"))
    eval_steps = [int(r["step"]) for r in rows if r.get("eval/success_rate")]
    assert eval_steps[0] == 0 and eval_steps[-1] == module.env_steps

    snapshot = _Snapshot()
    resumed = _module(policy_dir, total_env_steps=128)
    _trainer(tmp_path / "resume", [snapshot]).fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    restored = snapshot.state
    assert (restored["env_steps"], restored["buffer"], restored["updates"]) == \
        (saved["env_steps"], saved["buffer"], saved["updates"])
    for key, value in saved["actor"].items():
        assert torch.equal(restored["actor"][key], value), key
    for before, after in zip(saved["optim"], restored["optim"], strict=False):
        for slot, values in before["state"].items():
            for name, tensor in values.items():
                assert torch.equal(after["state"][slot][name], tensor), (slot, name)
    assert resumed.env_steps >= 128 and resumed.num_updates > saved["updates"]


def test_an_online_checkpoint_from_before_the_vectorised_sac_is_refused_clearly(policy_dir):
    module = _module(policy_dir, total_env_steps=64)
    old = {"zprl_online": {"policy_path": str(policy_dir), "collector": {}, "buffer": None}}  # no "format" entry
    with pytest.raises(ValueError, match="before 2026-11-28.*without --ckpt_path"):
        module.on_load_checkpoint(old)


def test_replay_buffer_reports_its_memory_per_transition():
    buffer = ReplayBuffer(10, obs_dim=39, action_dim=16)
    assert buffer.bytes_per_transition == 4 * (2 * 39 + 16 + 3)
