"""Evaluation metrics, the lockstep Evaluator and the Lightning RolloutEvalCallback."""

import math

import gymnasium as gym
import imageio.v3 as iio
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from zprl.envs import make_vector_env
from zprl.evaluation import EvalResult, Evaluator, RolloutPolicy, RolloutSource, smoothness_metrics
from zprl.evaluation_callback import RolloutEvalCallback


# ---------------------------------------------------------------- smoothness metrics
def test_linear_actions_have_zero_jerk():
    t = np.arange(10, dtype=np.float64)[:, None]
    metrics = smoothness_metrics(np.hstack([2 * t + 1, -0.5 * t]))
    assert metrics["jerk"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["action_delta"] == pytest.approx((2 + 0.5) / 2)


def test_cubic_actions_have_constant_third_difference():
    t = np.arange(6, dtype=np.float64)[:, None]
    # third difference of t^3 is 6 everywhere, of t^2 it is 0: jerk = mean([36, 0]) = 18
    metrics = smoothness_metrics(np.hstack([t**3, t**2]))
    assert metrics["jerk"] == pytest.approx(18.0)
    # |diffs| of t^3: 1, 7, 19, 37, 61 (mean 25); of t^2: 1, 3, 5, 7, 9 (mean 5)
    assert metrics["action_delta"] == pytest.approx(15.0)


def test_short_episodes_have_undefined_smoothness():
    assert math.isnan(smoothness_metrics(np.zeros((3, 2)))["jerk"])
    assert math.isnan(smoothness_metrics(np.zeros((1, 2)))["action_delta"])
    with pytest.raises(ValueError, match="shape"):
        smoothness_metrics(np.zeros(5))


def test_eval_result_aggregates_and_metrics():
    result = EvalResult.from_episodes(successes=[True, False], returns=[1.0, 0.0], lengths=[4, 10],
                                      episode_jerk=[2.0, math.nan], episode_action_delta=[0.5, 1.5], env_crashes=1)
    assert result.jerk == 2.0  # episodes without a defined jerk are left out
    assert result.as_metrics() == {"eval/success_rate": 0.5, "eval/mean_return": 0.5, "eval/mean_length": 7.0,
                                   "eval/jerk": 2.0, "eval/action_delta": 1.0, "eval/num_episodes": 2.0,
                                   "eval/env_crashes": 1.0}
    assert set(result.as_metrics(prefix="base/")) == {f"base/{k[5:]}" for k in result.as_metrics()}


# ---------------------------------------------------------------- Evaluator on a tiny env with known outcomes
class ScriptedEnv(gym.Env):
    """Episode outcome fixed by the reset seed: ``PLANS[seed] = (last step, outcome)``.

    Unseeded (auto-)resets succeed at step 1, so an evaluator that does not ignore finished envs would
    count spurious successes. Reward: 1.0 on success, 0.1 on every other step.
    """

    PLANS = {10: (2, "fail"), 11: (4, "crash"), 12: (9, "success"), 13: (3, "success")}

    def __init__(self):
        self.observation_space = gym.spaces.Dict({"observation.state": gym.spaces.Box(0, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.last_step, self.outcome = self.PLANS.get(seed, (1, "success"))
        self.t = 0
        return {"observation.state": np.zeros(1, np.float32)}, {"is_success": False}

    def step(self, action):
        self.t += 1
        done = self.t == self.last_step
        success = done and self.outcome == "success"
        obs = {"observation.state": np.full(1, self.t, np.float32)}
        info = {"is_success": success}
        if done and self.outcome == "crash":
            return obs, 0.1, False, True, {**info, "env_crashed": True}
        return obs, 1.0 if success else 0.1, done, False, info


class RampPolicy:
    """a_t = 0.5 * t in every env, counted from the last ``reset()``."""

    def __init__(self):
        self.resets = 0
        self.t = 0

    def reset(self):
        self.resets += 1
        self.t = 0

    def act(self, obs):
        self.t += 1
        return np.full((len(obs["observation.state"]), 1), 0.5 * self.t, np.float32)


def test_evaluator_exact_outcomes_with_partial_round():
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(ScriptedEnv(), 5)] * 3)
    policy = RampPolicy()
    assert isinstance(policy, RolloutPolicy)
    # seeds 10..13: fails at step 2, crashes at step 4, cut by the 5-step limit, succeeds at step 3
    result = Evaluator(envs, num_episodes=4, seed=10, progress=False).evaluate(policy)
    assert result.successes == [False, False, False, True]
    assert result.lengths == [2, 4, 5, 3]
    assert result.returns == pytest.approx([0.2, 0.4, 0.5, 1.2])
    assert result.success_rate == 0.25 and result.mean_length == 3.5
    assert result.num_episodes == 4 and result.env_crashes == 1
    assert policy.resets == 2  # one round of 3 episodes, one round of 1
    assert result.episode_action_delta == pytest.approx([0.5] * 4)
    assert result.episode_jerk[1:3] == pytest.approx([0.0, 0.0])
    assert math.isnan(result.episode_jerk[0]) and math.isnan(result.episode_jerk[3])  # fewer than 4 steps
    envs.close()


def test_evaluator_rejects_wrong_action_shape():
    envs = gym.vector.SyncVectorEnv([ScriptedEnv] * 2)

    class OneEnvPolicy(RampPolicy):
        def act(self, obs):
            return np.zeros((1, 1), np.float32)

    with pytest.raises(ValueError, match=r"shape \(1, 1\), expected \(2, 1\)"):
        Evaluator(envs, num_episodes=2, progress=False).evaluate(OneEnvPolicy())
    envs.close()


def test_evaluator_needs_next_step_autoreset():
    envs = gym.vector.SyncVectorEnv([ScriptedEnv], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="autoreset_mode=NEXT_STEP"):
        Evaluator(envs, num_episodes=1)
    envs.close()


# ---------------------------------------------------------------- Evaluator and callback on a real simulator (PushT)
class FirstObsPolicy:
    """Pushes towards a fixed point and records the first observation of each round."""

    def __init__(self):
        self.first_obs = []
        self.fresh = False

    def reset(self):
        self.fresh = True

    def act(self, obs):
        if self.fresh:
            self.first_obs.append(obs["observation.environment_state"].copy())
            self.fresh = False
        return np.full((len(obs["observation.state"]), 2), 300.0, np.float32)


def test_evaluator_on_pusht_is_reproducible():
    envs = make_vector_env("pusht", num_envs=2, asynchronous=True, max_episode_steps=20)
    try:
        runs = [(Evaluator(envs, num_episodes=3, seed=5, progress=False).evaluate(p), p)
                for p in (FirstObsPolicy(), FirstObsPolicy())]
    finally:
        envs.close()
    (first, policy_a), (second, policy_b) = runs
    assert first.num_episodes == 3 and first.lengths == [20, 20, 20]
    assert first.returns == second.returns and first.successes == second.successes
    assert len(policy_a.first_obs) == 2  # rounds of 2 and 1 episodes
    for a, b in zip(policy_a.first_obs, policy_b.first_obs, strict=False):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(policy_a.first_obs[0][0], policy_a.first_obs[0][1])  # seeds 5 and 6 differ
    assert first.episode_action_delta == [0.0, 0.0, 0.0]  # a constant action


def test_evaluator_writes_video(tmp_path):
    envs = make_vector_env("pusht", num_envs=1, max_episode_steps=5, render_mode="rgb_array")
    try:
        result = Evaluator(envs, num_episodes=2, progress=False, video_dir=str(tmp_path)).evaluate(FirstObsPolicy())
    finally:
        envs.close()
    assert len(result.video_paths) == 2  # one per round
    frames = iio.imread(result.video_paths[0], plugin="pyav")
    assert frames.shape[0] == 6 and frames.shape[-1] == 3  # the reset frame plus one per step


class RolloutModule(pl.LightningModule):
    """A trivial trainable module exposing ``rollout_policy(num_envs)`` as zprl's modules do."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.policy_modes = []
        self.rollout_weights = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=2)

    def env_kwargs(self):
        return {}

    def rollout_policy(self, num_envs):
        self.policy_modes.append((self.training, torch.is_grad_enabled()))
        self.rollout_weights.append(self.layer.weight.detach().clone())
        return FirstObsPolicy()


def test_zprl_modules_are_rollout_sources():
    from zprl.online.module import OnlineRLModule
    from zprl.pretrain import PretrainModule

    assert issubclass(PretrainModule, RolloutSource) and issubclass(OnlineRLModule, RolloutSource)
    assert isinstance(RolloutModule(), RolloutSource) and not isinstance(torch.nn.Linear(1, 1), RolloutSource)
    with pytest.raises(TypeError, match="RolloutSource"):
        RolloutEvalCallback("reach").evaluate(pl.LightningModule())


def test_callback_logs_eval_metrics(tmp_path):
    module = RolloutModule()
    callback = RolloutEvalCallback("pusht", every_n_epochs=2, num_episodes=2, max_episode_steps=5)
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback], logger=CSVLogger(tmp_path), default_root_dir=tmp_path,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    assert module.policy_modes == [(False, False), (False, False)]  # epoch 2 (every 2nd) and epoch 3 (last)
    assert module.training
    assert trainer.callback_metrics["eval/mean_length"] == 5.0
    assert trainer.callback_metrics["eval/num_episodes"] == 2.0
    assert callback.envs is None  # closed at teardown
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/success_rate" in logged and "eval/jerk" in logged


class _WeightRecorder(pl.Callback):
    """Records the module's weight and the EMA callback's averaged one at each epoch end (callbacks run in order)."""

    def __init__(self, ema):
        self.ema, self.averaged, self.current = ema, [], []

    def on_train_epoch_end(self, trainer, module):
        self.averaged.append(self.ema._average_model.module.layer.weight.detach().clone())
        self.current.append(module.layer.weight.detach().clone())


def test_callback_rolls_out_the_ema_weights_and_restores_the_trained_ones(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    module = RolloutModule()
    ema = EMAWeightAveraging(decay=0.5)
    before, after = _WeightRecorder(ema), _WeightRecorder(ema)
    callback = RolloutEvalCallback("reach", every_n_epochs=1, num_episodes=1, max_episode_steps=3)
    trainer = pl.Trainer(max_epochs=3, callbacks=[ema, before, callback, after], logger=False,
                         default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module)
    assert len(module.rollout_weights) == 3
    assert not torch.equal(before.averaged[-1], before.current[-1])  # the EMA lags the SGD updates
    for rolled_out, averaged, trained, restored in zip(module.rollout_weights, before.averaged, before.current,
                                                       after.current, strict=False):
        assert torch.equal(rolled_out, averaged)
        assert torch.equal(restored, trained)
