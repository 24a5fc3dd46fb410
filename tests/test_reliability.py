"""Faults and bad inputs: damaged files, killed runs, concurrent and unreachable MLflow stores, resumes.

Real files, a real MLflow sqlite store, real (tiny) Lightning runs and real killed subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from zprl.checkpointing import SafeModelCheckpoint, previous_path, resolve_resume_checkpoint
from zprl.cli import lightning_main, zprl_main
from zprl.data.generate import generate_dataset
from zprl.data.reach_demos import generate_reach_dataset
from zprl.online.replay_buffer import ReplayBuffer, Transitions
from zprl.policy_io import PolicyLoadError, load_policy
from zprl.tracking import check_tracking_server, prepare_tracking

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


def _copy_policy(policy_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in policy_dir.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


# -- item 4: a policy with missing or extra weights must not load ---------------------------------------

def test_policy_without_its_vib_weights_is_refused(policy_dir, tmp_path):
    broken = _copy_policy(policy_dir, tmp_path / "no_vib")
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".vib." not in k}, broken / "model.safetensors")
    with pytest.raises(PolicyLoadError) as err:
        load_policy(broken)
    message = str(err.value)
    assert str(broken / "model.safetensors") in message and "missing keys: diffusion.vib.decoder.0.bias" in message
    assert "Re-export the policy with the current zprl" in message
    policy, _, _ = load_policy(broken, strict=False)  # an explicit opt-out still loads
    assert not policy.training


def test_policy_with_unexpected_weights_is_refused(policy_dir, tmp_path):
    broken = _copy_policy(policy_dir, tmp_path / "extra")
    weights = load_file(broken / "model.safetensors")
    save_file({**weights, "diffusion.vib.extra_head.weight": torch.zeros(3)}, broken / "model.safetensors")
    with pytest.raises(PolicyLoadError, match="unexpected keys: diffusion.vib.extra_head.weight"):
        load_policy(broken)


@pytest.mark.parametrize("damage", ["truncated_weights", "broken_config", "broken_processor", "empty_weights"])
def test_damaged_policy_files_are_named(policy_dir, tmp_path, damage):
    broken = _copy_policy(policy_dir, tmp_path / damage)
    name = {"truncated_weights": "model.safetensors", "empty_weights": "model.safetensors",
            "broken_config": "config.json", "broken_processor": "policy_preprocessor.json"}[damage]
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(b"" if damage == "empty_weights" else data[: len(data) // 2])
    with pytest.raises(PolicyLoadError) as err:
        load_policy(broken)
    assert str(broken / name) in str(err.value) and "Re-export" in str(err.value)


# -- item 7: replay buffer and checkpoints -----------------------------------------------------------------

def test_replay_buffer_checkpoint_holds_only_the_filled_slots(tmp_path):
    buffer = ReplayBuffer(1_000_000, obs_dim=10, action_dim=4)
    n = 258
    buffer.add(Transitions(torch.randn(n, 10), torch.randn(n, 4), torch.randn(n), torch.randn(n, 10),
                           torch.zeros(n), torch.ones(n)))
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    assert (tmp_path / "buffer.pt").stat().st_size < 200_000  # 108 MB when slices shared the full storage
    restored = ReplayBuffer(1_000_000, obs_dim=10, action_dim=4)
    restored.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert len(restored) == n and torch.equal(restored.storage.obs[:n], buffer.storage.obs[:n])


ONLINE_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: -1
  max_steps: -1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: zprl.checkpointing.SafeModelCheckpoint
      init_args:
        dirpath: {root}/checkpoints
        save_last: true
        save_top_k: 0
        every_n_iterations: 1
        train_time_interval: "0:05:00"
model:
  class_path: zprl.online.module.OnlineRLModule
  init_args:
    policy_path: {policy}
    task: pusht
    steering: latent
    steering_scale: 1.0
    num_envs: 2
    asynchronous: false
    max_episode_steps: 20
    total_env_steps: 64
    env_steps_per_iter: 32
    utd_ratio: 0.5
    warmup_transitions: 4
    buffer_capacity: 100
    eval_every_env_steps: 64
    eval_episodes: 2
    seed: 0
    sac:
      hidden_dims: [32, 32]
      batch_size: 8
"""


def _env_steps(checkpoint: Path) -> int:
    from zprl.online.module import ONLINE_CHECKPOINT_KEY

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)[ONLINE_CHECKPOINT_KEY]
    return state["collector"]["env_steps"]


@pytest.fixture(scope="module")
def online_run(policy_dir, tmp_path_factory):
    """A 64-env-step online run through `lightning fit` with SafeModelCheckpoint saving every iteration."""
    root = tmp_path_factory.mktemp("online")
    config = root / "online.yaml"
    config.write_text(ONLINE_CONFIG.format(root=root, policy=policy_dir))
    lightning_main(["fit", "-c", str(config)])
    return root, config


def test_checkpoints_keep_the_previous_one_and_leave_no_temporary_files(online_run):
    root, _ = online_run
    last = root / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    assert _env_steps(previous_path(last)) < _env_steps(last) >= 64


def test_load_policy_names_an_online_checkpoint(online_run):
    root, _ = online_run
    with pytest.raises(PolicyLoadError, match="is an online RL checkpoint.*frozen policy it steers is"):
        load_policy(root / "checkpoints" / "last.ckpt")


def test_truncated_last_checkpoint_resumes_from_the_previous_one(online_run, tmp_path, caplog):
    root, config = online_run
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("last.ckpt", "last.prev.ckpt"):
        (checkpoints / name).write_bytes((root / "checkpoints" / name).read_bytes())
    previous_steps = _env_steps(checkpoints / "last.prev.ckpt")
    data = (checkpoints / "last.ckpt").read_bytes()
    (checkpoints / "last.ckpt").write_bytes(data[: len(data) // 2])

    with pytest.raises(PolicyLoadError, match="last.ckpt is not a readable checkpoint"):
        load_policy(checkpoints / "last.ckpt")
    assert resolve_resume_checkpoint(checkpoints / "last.ckpt") == checkpoints / "last.prev.ckpt"
    assert "Resuming from the previous checkpoint" in caplog.text
    # The resumed run continues with a raised budget (Lightning's CLI would restore the checkpoint's 64 and stop).
    resumed = tmp_path / "resumed"
    lightning_main(["fit", "-c", str(config), f"--trainer.default_root_dir={resumed}",
                    f"--trainer.callbacks.init_args.dirpath={resumed / 'checkpoints'}",
                    f"--ckpt_path={checkpoints / 'last.ckpt'}", "--model.init_args.total_env_steps=128"])
    assert _env_steps(resumed / "checkpoints" / "last.ckpt") >= 128 > previous_steps

    (checkpoints / "last.prev.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="last.prev.ckpt cannot be used either"):
        resolve_resume_checkpoint(checkpoints / "last.ckpt")


def test_resume_refuses_changed_model_settings(online_run, tmp_path):
    root, config = online_run
    with pytest.raises(SystemExit) as err:
        lightning_main(["fit", "-c", str(config), f"--trainer.default_root_dir={tmp_path}",
                        f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}", "--model.init_args.steering_scale=2.0",
                        "--model.init_args.steering=action"])
    message = str(err.value)
    assert "steering_scale: checkpoint 1.0, command line 2.0" in message and "steering: checkpoint 'latent'" in message
    assert not (tmp_path / "checkpoints").exists()


class _ManualOptimisation(L.LightningModule):
    """A linear model trained with manual optimisation, as the online module is."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.layer(batch).pow(2).mean())
        optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(8, 2), batch_size=2)


def test_time_trigger_works_with_manual_optimisation(tmp_path):
    # Lightning's ModelCheckpoint never checks train_time_interval under manual optimisation.
    checkpoint = SafeModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, train_time_interval="0:00:00")
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[checkpoint]).fit(_ManualOptimisation())
    steps = {name: torch.load(tmp_path / name, weights_only=True)["global_step"]
             for name in ("last.ckpt", "last.prev.ckpt")}
    assert steps == {"last.ckpt": 4, "last.prev.ckpt": 3}


def test_checkpoint_callback_rejects_lightning_step_trigger(tmp_path):
    with pytest.raises(ValueError, match="every_n_iterations"):
        SafeModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)


# -- items 2 and 8: MLflow stores ----------------------------------------------------------------------------

FIRST_USE = textwrap.dedent("""
    import sys
    from mlflow.tracking import MlflowClient
    from zprl.tracking import prepare_tracking
    uri = prepare_tracking(sys.argv[1])
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("probe-" + sys.argv[2]))
    client.log_metric(run.info.run_id, "x", 1.0)
""")


def test_concurrent_first_use_of_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlruns.db'}"
    runs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, uri, str(i)], env=ENV, stderr=subprocess.PIPE,
                             text=True) for i in range(3)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors


def test_unreachable_tracking_server_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"server http://127\.0\.0\.1:9 is unreachable"):
        check_tracking_server("http://127.0.0.1:9")
    assert time.monotonic() - start < 10


def test_fit_with_unreachable_tracking_server_fails_before_training(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"http://127\.0\.0\.1:9"):
        lightning_main(["fit", "-c", str(ROOT / "conf/pretrain_reach.yaml"), f"--trainer.default_root_dir={tmp_path}",
                        "--trainer.logger.init_args.tracking_uri=http://127.0.0.1:9",
                        f"--data.init_args.root={tmp_path / 'no_data'}"])
    assert time.monotonic() - start < 30


def test_damaged_sqlite_store_is_named(tmp_path):
    store = tmp_path / "mlruns.db"
    store.write_bytes(b"not a database" * 100)
    with pytest.raises(RuntimeError, match=f"Cannot open the MLflow store sqlite:///{store}"):
        prepare_tracking(f"sqlite:///{store}")


# -- item 3: dataset generation --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--demos", "0"], ["--demos", "-3"], ["--demos", "two"], ["--camera-size", "0"],
                                  ["--seed", "-1"]])
def test_invalid_generation_counts_are_errors(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as err:
        zprl_main(["data", "generate", "--task", "reach", "--out", str(tmp_path / "out"), *args])
    assert err.value.code == 2 and args[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="num_demos must be >= 1"):
        generate_reach_dataset(0, tmp_path / "out")


def test_overwrite_never_deletes_foreign_files(tmp_path):
    for out in (tmp_path / "lift", tmp_path / "reach"):
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        (out / "demo.hdf5").write_text("an old file the user keeps here")
    with pytest.raises(FileExistsError, match=r"did not write \(\['notes.txt'\]\).*would delete them"):
        generate_dataset("lift", 1, tmp_path / "lift", overwrite=True)
    with pytest.raises(FileExistsError, match=r"did not write"):
        generate_reach_dataset(2, tmp_path / "reach", overwrite=True)
    for out in (tmp_path / "lift", tmp_path / "reach"):
        assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_generated_dataset(tmp_path):
    from zprl.data.lerobot_source import load_lerobot_metadata

    out = tmp_path / "reach"
    generate_reach_dataset(3, out)
    generate_reach_dataset(2, out, overwrite=True)
    assert load_lerobot_metadata("zprl/reach_biased", root=out).total_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reach"]  # no staging folders left


def _generate_in_subprocess(out: Path, demos: int) -> subprocess.Popen:
    # A child of a backgrounded shell inherits an ignored SIGINT; Python's own handler makes Ctrl-C a KeyboardInterrupt.
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from zprl.cli import zprl_main; " \
           "zprl_main()"
    command = [sys.executable, "-c", code, "data", "generate", "--task", "reach", "--demos", str(demos), "--out",
               str(out)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_staging(out: Path, proc: subprocess.Popen) -> Path:
    for _ in range(600):
        staging = list(out.parent.glob(f".{out.name}.partial-*/data"))
        if staging:
            return staging[0].parent
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("generation never started writing")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_generation_leaves_no_dataset_and_restarts_cleanly(tmp_path, sig):
    out = tmp_path / "reach"
    proc = _generate_in_subprocess(out, 5000)
    staging = _wait_for_staging(out, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not out.exists()
    assert staging.exists() == (sig == signal.SIGKILL)  # Ctrl-C cleans up itself; kill -9 cannot
    generate_reach_dataset(2, out)  # the rerun needs no --overwrite and removes the dead run's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reach"]


# -- item 5: errors that name the file and the fix ---------------------------------------------------------------

@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory):
    return generate_reach_dataset(3, tmp_path_factory.mktemp("reach") / "data")


@pytest.mark.parametrize("layout", ["empty", "no_meta", "no_data", "nested", "file"])
def test_broken_lerobot_roots_are_named(reach_dataset, tmp_path, layout):
    from zprl.data.lerobot_source import load_lerobot_metadata

    root = tmp_path / "root"
    if layout == "file":
        root.write_text("")
    else:
        root.mkdir()
    if layout in ("no_meta", "no_data"):
        keep = "data" if layout == "no_meta" else "meta"
        os.symlink(reach_dataset / keep, root / keep)
    if layout == "nested":
        os.symlink(reach_dataset, root / "lerobot")
    with pytest.raises((FileNotFoundError, NotADirectoryError)) as err:
        load_lerobot_metadata("zprl/reach_biased", root=root)
    message = str(err.value)
    assert str(root) in message and "Offline" not in message
    if layout == "nested":
        assert "set `root` to that folder" in message and str(root / "lerobot") in message


def test_bad_data_module_parameters_name_the_parameter():
    from zprl.data.datamodule import LeRobotDataModule, RobomimicDataModule

    with pytest.raises(ValueError, match="data.init_args.n_obs_steps must be an integer >= 1, got 0"):
        RobomimicDataModule(n_obs_steps=0)
    with pytest.raises(ValueError, match="data.init_args.batch_size must be an integer >= 1"):
        LeRobotDataModule(batch_size=0)
    with pytest.raises(ValueError, match=r"data.init_args.horizon \(2\) must be >= data.init_args.n_obs_steps"):
        LeRobotDataModule(n_obs_steps=4, horizon=2)


def test_damaged_hdf5_is_named(tmp_path):
    from zprl.data.datamodule import RobomimicDataModule

    generate_dataset("lift", 1, tmp_path / "lift", tier_fractions=(1, 0, 0), progress=False)
    report = json.loads((tmp_path / "lift" / "report.json").read_text())
    data = bytearray(Path(report["hdf5"]).read_bytes())
    data[1000:3000] = b"\xff" * 2000  # the group's symbol table: the file opens but cannot be listed
    damaged = tmp_path / "damaged.hdf5"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"Cannot read the robomimic dataset {damaged}.*Regenerate it"):
        RobomimicDataModule(hdf5_path=str(damaged), n_obs_steps=2, horizon=8, val_fraction=0.0).setup()


def test_a_resumed_run_continues_its_mlflow_run(policy_dir, tmp_path):
    """Resume (with a raised budget) logs into the checkpoint's MLflow run: one run, one curve, FINISHED."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = tmp_path / "online.yaml"
    config.write_text(ONLINE_CONFIG.format(root=tmp_path / "run", policy=policy_dir))
    logger = ["--trainer.logger=lightning.pytorch.loggers.MLFlowLogger",
              "--trainer.logger.init_args.experiment_name=resume", f"--trainer.logger.init_args.tracking_uri={uri}"]
    lightning_main(["fit", "-c", str(config), *logger])
    lightning_main(["fit", "-c", str(config), *logger, f"--ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                    "--model.init_args.total_env_steps=128"])
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "env_steps")]
    assert min(steps) < 64 and max(steps) >= 128
    assert run.data.params["model.init_args.total_env_steps"] == "64"
    assert run.data.tags["resumed.model.init_args.total_env_steps"] == "128"
