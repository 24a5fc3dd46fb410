"""Seeded learning test: ZPRL's latent residual corrects a base policy that imitated a biased operator.

Runs what a user runs (``lightning fit -c conf/zprl_online.yaml -c conf/tasks/reach_online.yaml -c
conf/methods/zprl.yaml``) on the biased PointReach policy and reads the evaluations back from MLflow.
"""

from pathlib import Path

import mlflow

from zprl.cli import lightning_main

ROOT = Path(__file__).resolve().parents[1]


def test_zprl_raises_the_success_of_a_biased_base_policy(tiny_reach_policy, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    lightning_main(["fit", "-c", str(ROOT / "conf/zprl_online.yaml"), "-c", str(ROOT / "conf/tasks/reach_online.yaml"),
                    "-c", str(ROOT / "conf/methods/zprl.yaml"), f"--model.init_args.policy_path={tiny_reach_policy}",
                    "--model.init_args.total_env_steps=3000", "--model.init_args.eval_every_env_steps=1000",
                    f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("zprl-online").experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/success_rate"))
    (first_step, base_success), (last_step, steered_success) = history[0], history[-1]
    # The step-0 evaluation is the base policy itself: the actor's residual starts at zero.
    assert first_step == 0 and last_step >= 3000
    assert base_success <= 0.5, f"the biased base policy should mostly miss, got {base_success}"
    assert steered_success >= max(0.8, base_success + 0.4), history
