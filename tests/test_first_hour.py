"""What a new user meets in the first hour: LeRobot plugin registration, `zprl evaluate` results in MLflow and a
file, compare's nominal evaluation steps, `zprl robomimic`, quiet logs with a verbose switch, progress."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from zprl.cli import zprl_main
from zprl.envs import make_vector_env
from zprl.evaluation import Evaluator
from zprl.lightning_cli import ZPRLLightningCLI, ZPRLProgressBar
from zprl.online.compare import (
    EVAL_EVERY_PARAM,
    create_child_run,
    method_curve,
    plan_children,
    run_child,
    success_figure,
)
from zprl.policy import ZPRLPolicy, make_zprl_pre_post_processors, zprl_config_for

ROOT = Path(__file__).resolve().parents[1]
TINY = {"down_dims": (16, 32), "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "vib_hidden_dim": 32,
        "z_dim": 4, "num_inference_steps": 3, "device": "cpu"}


def _python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this environment, plus ``env``)."""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# ---------------------------------------------------------------- zprl as a LeRobot plugin
def test_import_zprl_registers_the_policy_type_lazily():
    out = _python(
        "import sys, zprl\n"
        "assert 'torch' not in sys.modules and 'lerobot' not in sys.modules, 'import zprl must stay light'\n"
        "from lerobot.policies.factory import get_policy_class, make_policy_config\n"
        "print(get_policy_class('zprl').__name__, type(make_policy_config('zprl')).__name__)\n").stdout
    assert out.split() == ["ZPRLPolicy", "ZPRLConfig"]


def test_import_zprl_after_lerobot_registers_at_once():
    out = _python("import lerobot.policies\nimport zprl\nfrom lerobot.policies import get_policy_class\n"
                  "print(get_policy_class('zprl').__name__)\n").stdout
    assert out.split() == ["ZPRLPolicy"]


def test_lerobot_discovers_the_plugin_distribution():
    # no zprl import here: LeRobot's own discovery (lerobot-train / lerobot-eval / lerobot-record) finds it
    out = _python("from lerobot.utils.import_utils import register_third_party_plugins\n"
                  "register_third_party_plugins()\n"
                  "from lerobot.policies.factory import get_policy_class\n"
                  "print(get_policy_class('zprl').__module__)\n").stdout
    assert out.split() == ["zprl.policy.modeling_zprl"]
    lerobot_eval = shutil.which("lerobot-eval", path=str(Path(sys.executable).parent)) or shutil.which("lerobot-eval")
    assert lerobot_eval is not None
    help_text = subprocess.run([lerobot_eval, "--help"], check=False, capture_output=True, text=True,
                               timeout=300).stdout
    choices = next(line for line in help_text.splitlines() if "--policy.type {" in line)
    assert "zprl" in choices.split("{")[1].split("}")[0].split(",")


# ---------------------------------------------------------------- zprl evaluate: MLflow run + JSON next to the policy
@pytest.fixture(scope="module")
def reach_policy_dir(tmp_path_factory):
    """A tiny untrained ZPRL policy for PointReach (state 2, env state 2, action 2) with its processors."""
    torch.manual_seed(0)
    config = zprl_config_for(2, 2, 2, **TINY)
    policy = ZPRLPolicy(config)
    stats = {key: {"min": np.full(2, -1.0, np.float32), "max": np.ones(2, np.float32),
                   "mean": np.zeros(2, np.float32), "std": np.full(2, 0.5, np.float32)}
             for key in ("observation.state", "observation.environment_state", "action")}
    pre, post = make_zprl_pre_post_processors(config, stats)
    out = tmp_path_factory.mktemp("reach_policy") / "policy"
    for part in (policy, pre, post):
        part.save_pretrained(out)
    return out


def test_evaluate_logs_an_mlflow_run_and_writes_json_next_to_the_policy(reach_policy_dir, tmp_path, monkeypatch,
                                                                         capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    zprl_main(["evaluate", "--policy", str(reach_policy_dir), "--task", "reach", "--episodes", "3", "--num-envs", "1",
               "--seed", "7", "--device", "cpu", "--video-dir", str(tmp_path / "videos")])
    out = capsys.readouterr().out
    results = reach_policy_dir / "eval_reach_7.json"
    assert f"Results written to {results}" in out
    saved = json.loads(results.read_text())
    assert saved["task"] == "reach" and saved["metrics"]["num_episodes"] == 3 and len(saved["successes"]) == 3

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("zprl-evaluate").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id in out
    assert run.data.params["task"] == "reach" and run.data.params["episodes"] == "3"
    assert run.data.metrics["success_rate"] == saved["metrics"]["success_rate"]
    assert {"mean_return", "mean_length", "jerk", "action_delta"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "eval_reach_7.json" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "videos")]  # --video-dir: videos logged too


def test_evaluator_reports_progress_every_step():
    envs = make_vector_env("reach", 2, asynchronous=False)
    calls = []

    class Still:
        def reset(self):
            pass

        def act(self, obs):
            return np.zeros((2, 2), np.float32)

    try:
        result = Evaluator(envs, 3, seed=0, progress=lambda episodes, steps: calls.append((episodes, steps))).evaluate(
            Still())
    finally:
        envs.close()
    episodes, steps = np.array(calls).T
    assert np.all(np.diff(episodes) >= 0) and np.all(np.diff(steps) > 0)
    assert episodes[-1] == 3 and steps[-1] == sum(result.lengths)


# ---------------------------------------------------------------- compare: the plot's x axis is the nominal steps
def test_compare_plot_uses_the_nominal_evaluation_steps(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("nominal")
    runs = []
    # num_envs 4: each evaluation lands 0-3 env steps after the scheduled one, differently per seed
    for history in ([(0, 0.2), (502, 0.5), (1003, 0.9)], [(0, 0.4), (501, 0.5), (1000, 0.7)]):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, EVAL_EVERY_PARAM, "500")  # as the logged config has it
        for step, value in history:
            client.log_metric(run.info.run_id, "eval/success_rate", value, step=step)
        runs.append(run.info.run_id)
    curve = method_curve(client, "zprl", runs)
    figure = success_figure([curve], "test")
    [line] = figure.axes[0].get_lines()
    assert line.get_xdata().tolist() == [0, 500, 1000]
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.5, 0.8])


def test_compare_launches_every_methods_seed_before_the_next_seed(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("order")
    parent = client.create_run(experiment)
    runs, launches = plan_children(client, experiment, parent.info.run_id, ["a.yaml", "b.yaml"], ["a", "b"], [1, 2],
                                   tmp_path, ([], "order", None, []))
    assert [(name, seed) for name, seed, _ in launches] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert list(runs) == ["a", "b"] and all(len(ids) == 2 for ids in runs.values())


def test_compare_child_runs_are_scheduled_until_they_start(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("children")
    parent = client.create_run(experiment)
    run_id = create_child_run(client, experiment, parent.info.run_id, "zprl", 1, tmp_path / "zprl_seed1")
    assert client.get_run(run_id).info.status == "SCHEDULED"
    launch = ([str(tmp_path / "missing.yaml")], str(ROOT / "conf/methods/zprl.yaml"), 1, run_id, "children",
              tmp_path / "zprl_seed1", "reach", [])
    with pytest.raises(subprocess.CalledProcessError):  # the child's config does not exist: it fails at once
        run_child(client, 3, 12, "zprl", 1, launch)
    assert "=== run 3/12: zprl seed 1" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "FAILED"


# ---------------------------------------------------------------- zprl robomimic <script>
def test_robomimic_scripts_run_with_the_mujoco_py_stand_in(tiny_lift_dataset):
    command = [sys.executable, "-c", "import sys; from zprl.cli import zprl_main; zprl_main(sys.argv[1:])",
               "robomimic", "playback_dataset.py", "--dataset", str(tiny_lift_dataset / "demo.hdf5"), "--n", "1"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Playing back episode: demo_0" in result.stdout
    assert "No private macro file" not in result.stdout + result.stderr  # quiet by default


# -------------------------------------------------------- quiet by default, --verbose / ZPRL_LOG_LEVEL shows all
QUIET_CHECK = (
    "from zprl.logging_setup import configure_logging\n"
    "configure_logging()\n"
    "import robosuite, robomimic.macros\n"
    "from lerobot.utils.import_utils import get_safe_default_video_backend\n"
    "get_safe_default_video_backend()\n"
)


def test_known_harmless_messages_are_dropped_unless_verbose():
    quiet = _python(QUIET_CHECK, env={"ZPRL_LOG_LEVEL": "INFO"})
    verbose = _python(QUIET_CHECK, env={"ZPRL_LOG_LEVEL": "DEBUG"})
    assert "macro file" not in quiet.stdout + quiet.stderr
    assert "macro file" in verbose.stdout + verbose.stderr
    if "cannot be loaded" in verbose.stderr:  # torchcodec without a system FFmpeg
        assert "torchcodec" not in quiet.stderr


def test_unbounded_epochs_show_no_negative_last_epoch(tmp_path):
    cli = ZPRLLightningCLI(BoringModel, run=False, args=[
        "--trainer.max_epochs=-1", "--trainer.max_steps=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp_path}"])
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, ZPRLProgressBar)  # added by default when the config names no progress bar
    cli.trainer.fit(cli.model)
    assert bar._get_train_description(88).strip() == "Epoch 88"
    bounded = pl.Trainer(max_epochs=5, callbacks=[ZPRLProgressBar()], logger=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=0)
    bounded.fit(BoringModel())
    assert bounded.progress_bar_callback._get_train_description(3).strip() == "Epoch 3/4"


@pytest.mark.parametrize("config", ["conf/pretrain.yaml", "conf/zprl_online.yaml", "conf/pretrain_reach.yaml"])
def test_mlflow_is_the_default_logger_set_in_one_place(config, tmp_path):
    """Configs name only the experiment and run; the CLI supplies MLflow and the store ($MLFLOW_TRACKING_URI)."""
    import yaml

    assert "tracking_uri" not in (ROOT / config).read_text()
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    printed = subprocess.run([sys.executable, "-c", "from zprl.cli import lightning_main; lightning_main()", "fit",
                              "-c", config, "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert printed.returncode == 0, printed.stderr[-2000:]
    logger = yaml.safe_load(printed.stdout)["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert logger["init_args"]["tracking_uri"] == uri and logger["init_args"]["log_model"] is False
    assert logger["init_args"]["experiment_name"].startswith("zprl-")
