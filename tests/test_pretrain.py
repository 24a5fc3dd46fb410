"""Offline pretraining: CLI smoke run into a real MLflow store, loss goes down, NaN stops safely, export/load."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import lightning as L
import mlflow
import numpy as np
import pytest
import torch

from zprl.data.datamodule import RobomimicDataModule
from zprl.data.schema import STATE
from zprl.policy.configuration_zprl import ZPRLSettings
from zprl.policy_io import load_policy
from zprl.pretrain import NonFiniteLossError, PretrainModule

TINY_POLICY = {"down_dims": [16, 32], "vib_hidden_dim": 32, "num_inference_steps": 4, "flow_num_steps": 4,
               "z_dim": 4, "n_action_steps": 4, "scheduler_warmup_steps": 5, "optimizer_lr": 3e-3}


def tiny_module(base_policy: str | None = None, export_dir: str | None = None, **fields) -> PretrainModule:
    return PretrainModule(ZPRLSettings(**{**TINY_POLICY, **fields}), base_policy=base_policy, export_dir=export_dir)


def lift_data(root, **kwargs) -> RobomimicDataModule:
    return RobomimicDataModule(hdf5_path=str(root / "demo.hdf5"), n_obs_steps=2, horizon=8, batch_size=32,
                               val_fraction=0.0, **kwargs)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path), "enable_checkpointing": False}
    return L.Trainer(**{**defaults, **kwargs})


def fixed_noise_loss(module: PretrainModule, batch: dict) -> float:
    torch.manual_seed(123)
    with torch.no_grad():
        return float(module.policy.forward(module.preprocessor(batch))[0])


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_short_pretraining_lowers_the_loss(tiny_lift_dataset, tmp_path, head):
    L.seed_everything(0)
    data, module = lift_data(tiny_lift_dataset), tiny_module(head=head)
    fit = trainer(tmp_path, max_steps=200)
    data.setup("fit")
    batch = next(iter(torch.utils.data.DataLoader(data.train_set, batch_size=64, shuffle=True)))
    fit.fit(module, datamodule=data)
    after = fixed_noise_loss(module, batch)
    fresh = tiny_module(head=head)
    fresh.trainer = fit  # builds an untrained policy from the same data
    fresh.policy = None
    fresh.configure_model()
    before = fixed_noise_loss(fresh, batch)
    assert after < 0.75 * before, (before, after)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_lift_dataset, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data, module = lift_data(tiny_lift_dataset), tiny_module()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer(tmp_path, max_steps=3, callbacks=[checkpoints], enable_checkpointing=True).fit(module, datamodule=data)
    last = tmp_path / "ckpt" / "last.ckpt"
    digest = hashlib.sha256(last.read_bytes()).hexdigest()

    class PoisonedSet(torch.utils.data.Dataset):
        """The same samples, with NaN observations (a corrupted sensor stream)."""

        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, index):
            sample = dict(self.inner[index])
            sample[STATE] = torch.full_like(sample[STATE], float("nan"))
            return sample

    data.train_set = PoisonedSet(data.train_set)
    checkpoints2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is .*last.ckpt"):
        trainer(tmp_path, max_steps=6, callbacks=[checkpoints2], enable_checkpointing=True).fit(
            module, datamodule=data, ckpt_path=str(last))
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest


def test_export_and_checkpoint_load_the_same_policy(tiny_lift_dataset, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data, module = lift_data(tiny_lift_dataset), tiny_module(export_dir=str(tmp_path / "export"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=4, callbacks=[ckpt], enable_checkpointing=True).fit(module, datamodule=data)
    from_folder = load_policy(tmp_path / "export")
    from_ckpt = load_policy(tmp_path / "ckpt" / "last.ckpt")
    sample = data.train_set[10]
    actions = []
    for policy, pre, post in (from_folder, from_ckpt):
        batch = pre({k: v[None] for k, v in sample.items() if k.startswith("observation.")})
        noise = policy.sample_noise(1, generator=torch.Generator().manual_seed(0))
        cond = policy.decode_latent(policy.encode_latent(batch).mu)
        actions.append(post(policy.generate(cond, noise=noise)))
    torch.testing.assert_close(actions[0], actions[1])
    with pytest.raises(FileNotFoundError, match="lightning fit -c conf/pretrain.yaml"):
        load_policy(tmp_path / "nope")


def test_cli_smoke_run_records_an_mlflow_run(tiny_lift_dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overlay = tmp_path / "smoke.yaml"
    overlay.write_text(textwrap.dedent(f"""\
        trainer:
          max_epochs: 2
          limit_train_batches: 2
          log_every_n_steps: 1
          limit_val_batches: 1
          check_val_every_n_epoch: 1
          default_root_dir: {tmp_path / 'run'}
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args:
                dirpath: {tmp_path / 'run' / 'checkpoints'}
                save_last: true
            - class_path: zprl.evaluation_callback.RolloutEvalCallback
              init_args:
                task: null
                every_n_epochs: 1
                num_episodes: 1
                max_episode_steps: 8
        model:
          init_args:
            policy: {TINY_POLICY}
        data:
          init_args:
            hdf5_path: {tiny_lift_dataset / 'demo.hdf5'}
            horizon: 8
            batch_size: 16
            num_workers: 0
            val_fraction: 0.2
        """))
    command = [sys.executable, "-c", "from zprl.cli import lightning_main; lightning_main()",
               "fit", "-c", "conf/pretrain.yaml", "-c", str(overlay), f"--trainer.logger.init_args.tracking_uri={uri}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the closing summary names the exported policy and the next commands
    assert f"policy (LeRobot format): {tmp_path / 'run' / 'policy'}" in result.stdout
    assert f"zprl evaluate --policy {tmp_path / 'run' / 'policy'} --task lift" in result.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["zprl-pretrain"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    expected = {"train/loss", "train/imitation_loss", "train/kl_loss", "val/loss", "eval/success_rate"}
    assert expected <= set(run.data.metrics)
    assert run.data.params["model.init_args.policy.head"] == "flow"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "policy"} <= artifacts
    assert not any(a.startswith("last") for a in artifacts)  # checkpoint upload is opt-in (logger log_model)
    policy_files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "policy")}
    assert "policy/model.safetensors" in policy_files and "policy/config.json" in policy_files
    assert np.isfinite(run.data.metrics["train/loss"])


def test_posthoc_vib_on_a_stock_lerobot_diffusion_policy(tiny_lift_dataset, tmp_path):
    """A trained stock LeRobot DiffusionPolicy gets a VIB: only VIB weights train, lerobot's loaders read the export."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from safetensors.torch import load_file

    from zprl.policy import zprl_config_for

    torch.manual_seed(0)
    data = lift_data(tiny_lift_dataset)
    data.setup("fit")
    spec = data.spec
    features = zprl_config_for(spec.state_dim, spec.env_state_dim, spec.action_dim)
    config = DiffusionConfig(input_features=features.input_features, output_features=features.output_features,
                             n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32), num_inference_steps=4,
                             noise_scheduler_type="DDIM",  # deterministic given the initial noise
                             device="cpu")
    stock = DiffusionPolicy(config)
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=data.stats)
    optimizer = torch.optim.Adam(stock.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=16, shuffle=True)
    for batch, _ in zip(loader, range(3), strict=False):
        loss, _ = stock.forward(pre(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source = tmp_path / "stock"
    for part in (stock, pre, post):
        part.save_pretrained(source)

    module = tiny_module(vib_num_layers=1, base_policy=str(source), export_dir=str(tmp_path / "export"))
    trainer(tmp_path, max_steps=5).fit(module, datamodule=data)
    assert module.policy.config.vib_training == "posthoc"

    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    vib_keys = {k for k in after if k.startswith("diffusion.vib.")}
    assert vib_keys and set(after) - vib_keys - {"_extra_state"} == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # bitwise the source's
    loaded = get_policy_class("zprl").from_pretrained(tmp_path / "export")
    loaded_pre, loaded_post = make_pre_post_processors(loaded.config, pretrained_path=str(tmp_path / "export"))
    sample = data.train_set[0]
    obs = {k: v[None, -1] for k, v in sample.items() if k.startswith("observation.")}
    action = loaded_post(loaded.eval().select_action(loaded_pre(obs)))
    assert action.shape == (1, spec.action_dim) and torch.isfinite(action).all()
    # The raw path of the export is the source policy itself, action for action.
    loaded.config.inference_conditioning = "raw"
    loaded.reset()
    stock.eval().reset()
    noise = loaded.sample_noise(1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.select_action(loaded_pre(dict(obs)), noise=noise),
                               stock.select_action(pre(dict(obs)), noise=noise))


def test_posthoc_refines_the_vib_of_a_zprl_policy(tiny_lift_dataset, tmp_path):
    """A trained ZPRLPolicy's own VIB trains on: every other weight stays bitwise, the optimiser is the settings'."""
    from safetensors.torch import load_file

    data = lift_data(tiny_lift_dataset)
    source = tiny_module(head="flow", latent_generator_weight=0.5, export_dir=str(tmp_path / "source"))
    trainer(tmp_path, max_steps=3).fit(source, datamodule=data)
    refine = tiny_module(head="flow", beta=1e-3, vib_recon_weight=1.0, optimizer_lr=1e-2,
                         base_policy=str(tmp_path / "source"), export_dir=str(tmp_path / "refined"))
    trainer(tmp_path, max_steps=3).fit(refine, datamodule=data)
    config = refine.policy.config
    assert (config.vib_training, config.beta, config.vib_recon_weight, config.head) == ("posthoc", 1e-3, 1.0, "flow")
    assert refine.optimizers().param_groups[0]["initial_lr"] == 1e-2

    before = load_file(tmp_path / "source" / "model.safetensors")
    after = load_file(tmp_path / "refined" / "model.safetensors")
    assert set(before) == set(after)
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("diffusion.vib."))
    for key in set(before) - {"_extra_state"}:  # _extra_state counts training forwards (the KL warm-up)
        if not key.startswith("diffusion.vib."):
            assert torch.equal(before[key], after[key]), key

    with pytest.raises(ValueError, match="z_dim: source 4, settings 8"):
        trainer(tmp_path, max_steps=1).fit(tiny_module(z_dim=8, base_policy=str(tmp_path / "source")), datamodule=data)
