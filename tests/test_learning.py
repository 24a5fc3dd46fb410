"""Seeded learning test: ZPRL's latent residual corrects a base policy that imitated a biased operator."""

import csv

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from zprl.online.module import OnlineRLModule


def test_zprl_raises_the_success_of_a_biased_base_policy(tiny_reach_policy, tmp_path):
    torch.set_num_threads(1)
    module = OnlineRLModule(
        policy_path=str(tiny_reach_policy), task="reach", steering="latent", steering_scale=1.0, num_envs=8,
        asynchronous=False, total_env_steps=3000, env_steps_per_iter=64, utd_ratio=1.0, warmup_env_steps=800,
        warmup_action="random", buffer_capacity=20_000, eval_every_env_steps=3000, eval_episodes=50, seed=0,
        sac={"hidden_dims": (64, 64), "batch_size": 128, "init_alpha": 0.02, "actor_lr": 1e-3,
             "critic_lr": 1e-3, "gamma": 0.97})
    L.Trainer(max_steps=-1, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, logger=CSVLogger(tmp_path, name="csv")).fit(module)

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        evals = [(int(float(r["step"])), float(r["eval/success_rate"])) for r in csv.DictReader(f)
                 if r.get("eval/success_rate")]
    (first_step, base_success), (last_step, steered_success) = evals[0], evals[-1]
    # The step-0 evaluation is the base policy itself: the actor's residual starts at zero.
    assert first_step == 0 and last_step >= 3000
    assert base_success <= 0.5, f"the biased base policy should mostly miss, got {base_success}"
    assert steered_success >= max(0.8, base_success + 0.4), (base_success, steered_success)
