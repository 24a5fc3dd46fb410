"""Offline pretraining of the ZPRL policy (diffusion / flow head with a VIB) as a LightningModule."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import draccus
import lightning as L
import numpy as np
import torch
from diffusers.optimization import get_scheduler

from zprl.data.schema import DatasetSpec
from zprl.rollout import LeRobotRolloutPolicy
from zprl.tracking import mlflow_loggers

PRETRAIN_CHECKPOINT_KEY = "zprl"


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite; the last saved checkpoint is kept intact."""


def build_policy(spec: DatasetSpec, stats: dict, n_obs_steps: int, horizon: int, device: torch.device | str,
                 **config_overrides: Any):
    """A fresh ZPRLPolicy matching a dataset, with pre/post processors normalising by its statistics."""
    from zprl.policy import ZPRLPolicy, make_zprl_pre_post_processors, zprl_config_for

    config = zprl_config_for(spec.state_dim, spec.env_state_dim, spec.action_dim, camera_names=spec.camera_names,
                             image_shape=spec.image_shape, n_obs_steps=n_obs_steps, horizon=horizon,
                             device=str(device), **config_overrides)
    policy = ZPRLPolicy(config)
    preprocessor, postprocessor = make_zprl_pre_post_processors(config, dataset_stats=stats)
    return policy, preprocessor, postprocessor


def build_posthoc_policy(source: str, spec: DatasetSpec, n_obs_steps: int, horizon: int,
                         device: torch.device | str, **vib_fields: Any):
    """A ZPRLPolicy wrapping a trained LeRobot ``DiffusionPolicy`` (local folder or hub repo id) with a new VIB.

    Every non-VIB weight and both processors are the source's; the config is the source's plus
    ``vib_fields`` with ``vib_training="posthoc"``, so only the VIB trains (its optimiser holds the VIB alone).
    """
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from zprl.policy import ZPRLConfig, ZPRLPolicy, zprl_config_for
    from zprl.policy_io import POSTPROCESSOR_FILE, PREPROCESSOR_FILE

    base = DiffusionPolicy.from_pretrained(source)
    fields = {f.name: getattr(base.config, f.name) for f in dataclasses.fields(DiffusionConfig) if f.init}
    # The backbone's weights come from the source's state dict: never download torchvision's again.
    fields.update(pretrained_backbone_weights=None, device=str(device))
    config = ZPRLConfig(**fields, head="diffusion", **{**vib_fields, "vib_training": "posthoc"})
    expected = zprl_config_for(spec.state_dim, spec.env_state_dim, spec.action_dim, camera_names=spec.camera_names,
                               image_shape=spec.image_shape)
    for name, ours, theirs in (("input features", expected.input_features, config.input_features),
                               ("output features", expected.output_features, config.output_features),
                               ("n_obs_steps", n_obs_steps, config.n_obs_steps), ("horizon", horizon, config.horizon)):
        if ours != theirs:
            raise ValueError(f"The base policy {source} has {name} {theirs}, but the data gives {ours}. Point "
                             "`data` at the dataset the base policy was trained on (same keys, n_obs_steps, horizon).")
    policy = ZPRLPolicy(config)
    missing, unexpected = policy.load_state_dict(base.state_dict(), strict=False)
    missing = [key for key in missing if not key.startswith("diffusion.vib.") and key != "_extra_state"]
    if missing or unexpected:
        raise ValueError(f"{source} is not a LeRobot DiffusionPolicy this zprl can wrap: missing {missing}, "
                         f"unexpected {unexpected}.")
    policy.requires_grad_(False)
    policy.diffusion.vib.requires_grad_(True)
    preprocessor = PolicyProcessorPipeline.from_pretrained(
        source, config_filename=PREPROCESSOR_FILE, overrides={"device_processor": {"device": str(device)}})
    postprocessor = PolicyProcessorPipeline.from_pretrained(
        source, config_filename=POSTPROCESSOR_FILE, to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action)
    return policy, preprocessor, postprocessor


def processor_stats(preprocessor) -> dict[str, dict[str, np.ndarray]]:
    """Normalisation statistics held by a LeRobot preprocessor pipeline, as {feature: {stat: array}}."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for step in preprocessor.steps:
        if hasattr(step, "stats"):
            for flat_key, tensor in step.state_dict().items():
                feature, stat = flat_key.rsplit(".", 1)
                stats.setdefault(feature, {})[stat] = tensor.cpu().numpy()
    return stats


class PretrainModule(L.LightningModule):
    """Imitation pretraining of a VIB diffusion / flow-matching policy (loss terms: ZPRLConfig.vib_training).

    The policy is built in ``configure_model`` from the DataModule's ``spec`` and ``stats`` (so the same
    config fits any dataset); ``n_obs_steps`` and ``horizon`` come from the DataModule. At the end of
    training the policy (EMA weights when the EMAWeightAveraging callback is on) is exported as a
    LeRobot-format folder (``save_pretrained`` + processors) to ``export_dir`` and logged to MLflow.

    Args:
        head: "diffusion" (DDPM training, DDIM sampling) or "flow" (flow matching, Euler sampling).
        bottleneck: False is the no-bottleneck ablation (identity path, no KL).
        z_dim / beta / beta_warmup_steps: VIB latent size and KL weight with linear warm-up.
        n_action_steps: executed part of each generated chunk.
        policy_overrides: any other ZPRLConfig field (vib_training, kl_reduction, vib_recon_weight,
            inference_conditioning, down_dims, flow_num_steps, vision_backbone...).
        base_policy: post-hoc plug-in: a trained LeRobot DiffusionPolicy (local folder or hub repo id). It is
            frozen and only a new VIB trains; head / n_action_steps and every non-VIB field come from it.
        lr / weight_decay / warmup_steps / grad clipping: AdamW with warm-up + cosine decay (clip in Trainer).
        export_dir: where the LeRobot-format policy is written (default: <default_root_dir>/policy).
    """

    def __init__(self, head: str = "diffusion", bottleneck: bool = True, z_dim: int = 16, beta: float = 2e-4,
                 beta_warmup_steps: int = 0, n_action_steps: int = 8, policy_overrides: dict | None = None,
                 lr: float = 1e-4, weight_decay: float = 1e-6, warmup_steps: int = 500, export_dir: str | None = None,
                 base_policy: str | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the CLI logs the whole config (zprl.tracking)
        self.policy = None
        self.preprocessor = self.postprocessor = None
        self._spec: DatasetSpec | None = None
        self._stats: dict | None = None

    # -- model construction -------------------------------------------------------------------------
    def policy_config_overrides(self) -> dict[str, Any]:
        hp = self.hparams
        return dict(head=hp.head, bottleneck=hp.bottleneck, z_dim=hp.z_dim, beta=hp.beta,
                    beta_warmup_steps=hp.beta_warmup_steps, n_action_steps=hp.n_action_steps,
                    **(hp.policy_overrides or {}))

    def configure_model(self) -> None:
        """Build the policy and processors on this rank's device (Lightning sets ``self.device`` first)."""
        if self.policy is not None:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or getattr(datamodule, "spec", None) is None:
            raise RuntimeError("PretrainModule builds its policy from a zprl PolicyDataModule: pass `data=` "
                               "(RobomimicDataModule or LeRobotDataModule) to the Trainer / LightningCLI.")
        self._spec, self._stats = datamodule.spec, datamodule.stats
        if self.hparams.base_policy:
            overrides = self.policy_config_overrides()
            vib_fields = {key: overrides[key] for key in overrides if key.startswith(("vib_", "kl_")) or key in
                          ("z_dim", "beta", "beta_warmup_steps", "bottleneck", "inference_conditioning")}
            self.policy, self.preprocessor, self.postprocessor = build_posthoc_policy(
                self.hparams.base_policy, datamodule.spec, datamodule.n_obs_steps, datamodule.horizon, self.device,
                **vib_fields)
            self._stats = processor_stats(self.preprocessor)  # the source's normalisation, not the data's
            return
        self.policy, self.preprocessor, self.postprocessor = build_policy(
            datamodule.spec, datamodule.stats, datamodule.n_obs_steps, datamodule.horizon, self.device,
            **self.policy_config_overrides())

    # -- training -----------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.forward(self.preprocessor(batch))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, info = self._loss(batch)
        if not torch.isfinite(loss):
            last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteLossError(
                f"Training loss became {loss.item()} at step {self.global_step}. Training stopped; the last good "
                f"checkpoint is {last}. Lower `model.lr`, enable gradient clipping, or check the data for NaN.")
        self.log_dict({f"train/{k}": float(v) for k, v in info.items() if k != "loss"}, on_step=True,
                      batch_size=batch["action"].shape[0])  # float: one host sync per step, in policy.forward
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["action"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, info = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["action"].shape[0])
        self.log_dict({f"val/{k}": float(v) for k, v in info.items() if k.endswith("imitation_loss")},
                      sync_dist=True, batch_size=batch["action"].shape[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, betas=(0.95, 0.999))
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 100_000
        scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(self.hparams.warmup_steps, total // 2),
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- rollouts and export ------------------------------------------------------------------------
    def rollout_policy(self, num_envs: int = 1) -> LeRobotRolloutPolicy:
        """The current policy as a RolloutPolicy for the evaluator (eval mode, mean latent).

        ``num_envs`` is not needed: LeRobot's observation and action queues batch over any number of envs.
        """
        self.policy.eval()
        return LeRobotRolloutPolicy(self.policy, self.preprocessor, self.postprocessor, self.device)

    def export_policy(self, out_dir: str | Path) -> Path:
        """Write the policy as a LeRobot-format folder (config.json, model.safetensors, processors)."""
        out_dir = Path(out_dir)
        self.policy.save_pretrained(out_dir)
        self.preprocessor.save_pretrained(out_dir)
        self.postprocessor.save_pretrained(out_dir)
        return out_dir

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        out_dir = Path(self.hparams.export_dir or Path(self.trainer.default_root_dir) / "policy")
        self.export_policy(out_dir)
        for logger in mlflow_loggers(self.trainer):
            logger.experiment.log_artifacts(logger.run_id, str(out_dir), artifact_path="policy")

    # -- standalone checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what rebuilds the policy without the DataModule (see ``zprl.policy_io.load_policy``).

        Only JSON strings and tensors, so Lightning's ``weights_only`` resume can read the checkpoint.
        """
        checkpoint[PRETRAIN_CHECKPOINT_KEY] = {
            "policy_config": json.dumps(draccus.encode(self.policy.config)),
            "dataset_spec": json.dumps(dataclasses.asdict(self._spec), default=str),
            "dataset_stats": {key: {name: torch.as_tensor(np.asarray(value)) for name, value in stat.items()}
                              for key, stat in self._stats.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume on data whose shapes differ from the checkpoint's, naming both."""
        saved = json.loads(checkpoint[PRETRAIN_CHECKPOINT_KEY]["dataset_spec"])
        for field in ("state_dim", "env_state_dim", "action_dim", "camera_names"):
            now = getattr(self._spec, field)
            if (list(now) if isinstance(now, tuple) else now) != saved[field]:
                raise ValueError(
                    f"The checkpoint was trained on data with {field}={saved[field]}, but the DataModule now gives "
                    f"{field}={now}. Point `data` at the dataset the checkpoint came from, or start without ckpt_path.")
