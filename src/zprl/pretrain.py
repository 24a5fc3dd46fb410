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
from zprl.policy.configuration_zprl import ZPRLSettings
from zprl.policy_io import env_kwargs_for
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
                         device: torch.device | str, settings: dict[str, Any]):
    """A trained policy (local folder or hub repo id) made ready to train only its VIB.

    The source is a LeRobot ``DiffusionPolicy`` (it gets a new VIB of ``settings``' shape) or a ``ZPRLPolicy``
    (its own VIB is refined, e.g. against the final EMA weights of a decoupled run). Every non-VIB weight and
    both processors are the source's; the config is the source's plus the VIB loss and optimiser fields of
    ``settings``, with ``vib_training="posthoc"``, so only the VIB trains.
    """
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from zprl.policy import ZPRLConfig, ZPRLPolicy, zprl_config_for
    from zprl.policy.configuration_zprl import TRAINING_FIELDS, VIB_ARCHITECTURE_FIELDS, VIB_LOSS_FIELDS
    from zprl.policy_io import POSTPROCESSOR_FILE, PREPROCESSOR_FILE

    source_config = PreTrainedConfig.from_pretrained(source)
    trained = {name: settings[name] for name in (*VIB_LOSS_FIELDS, *TRAINING_FIELDS)}
    if isinstance(source_config, ZPRLConfig):
        differing = [f"{name}: source {getattr(source_config, name)!r}, settings {settings[name]!r}"
                     for name in VIB_ARCHITECTURE_FIELDS if getattr(source_config, name) != settings[name]]
        if differing:
            raise ValueError(f"Refining the VIB of {source} keeps its shape, but the policy settings differ: "
                             f"{'; '.join(differing)}. Set `model.init_args.policy.<field>` to the source's values.")
        if not source_config.bottleneck:
            raise ValueError(f"{source} has no bottleneck (`bottleneck: false`): there is no VIB to train.")
        base = ZPRLPolicy.from_pretrained(source)
        # Post hoc only the VIB trains, so the generator's own latent loss (decoupled training) is off.
        config = dataclasses.replace(base.config, **trained, vib_training="posthoc", latent_generator_weight=0.0,
                                     device=str(device))
        state_dict = base.state_dict()
    elif isinstance(source_config, DiffusionConfig):
        base = DiffusionPolicy.from_pretrained(source)
        fields = {f.name: getattr(base.config, f.name) for f in dataclasses.fields(DiffusionConfig) if f.init}
        # The backbone's weights come from the source's state dict: never download torchvision's again.
        fields.update(pretrained_backbone_weights=None, device=str(device))
        architecture = {name: settings[name] for name in VIB_ARCHITECTURE_FIELDS}
        config = ZPRLConfig(**{**fields, **architecture, **trained, "head": "diffusion", "vib_training": "posthoc"})
        state_dict = base.state_dict()
    else:
        raise ValueError(f"{source} holds a {type(source_config).__name__}; the post-hoc VIB plugs into a LeRobot "
                         "DiffusionPolicy or a zprl ZPRLPolicy.")
    expected = zprl_config_for(spec.state_dim, spec.env_state_dim, spec.action_dim, camera_names=spec.camera_names,
                               image_shape=spec.image_shape)
    for name, ours, theirs in (("input features", expected.input_features, config.input_features),
                               ("output features", expected.output_features, config.output_features),
                               ("n_obs_steps", n_obs_steps, config.n_obs_steps), ("horizon", horizon, config.horizon)):
        if ours != theirs:
            raise ValueError(f"The base policy {source} has {name} {theirs}, but the data gives {ours}. Point "
                             "`data` at the dataset the base policy was trained on (same keys, n_obs_steps, horizon).")
    policy = ZPRLPolicy(config)
    missing, unexpected = policy.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not key.startswith("diffusion.vib.") and key != "_extra_state"]
    if missing or unexpected:
        raise ValueError(f"{source} is not a policy this zprl can wrap: missing {missing}, unexpected {unexpected}.")
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
        policy: every `ZPRLConfig` field a run sets (head, bottleneck, z_dim, beta, vib_training, down_dims,
            flow_num_steps, n_action_steps, ...) and the optimiser preset the exported `config.json` records and
            training uses: AdamW (`optimizer_lr`, `optimizer_betas`, `optimizer_eps`, `optimizer_weight_decay`)
            with `scheduler_warmup_steps` of linear warm-up and `scheduler_name` decay (gradient clipping: the
            Trainer's `gradient_clip_val`). The dataset decides features, `n_obs_steps` and `horizon`.
        base_policy: post-hoc VIB: a trained LeRobot DiffusionPolicy (a new VIB of `policy`'s shape) or ZPRLPolicy
            (its VIB refined), as a local folder or hub repo id. It is frozen and only the VIB trains, with
            `policy`'s VIB loss and optimiser fields; every other field comes from the source.
        export_dir: where the LeRobot-format policy is written (default: <default_root_dir>/policy).
    """

    def __init__(self, policy: ZPRLSettings | None = None, export_dir: str | None = None,
                 base_policy: str | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["policy"])  # the CLI logs the whole config (zprl.tracking)
        self.hparams["policy"] = dataclasses.asdict(policy if policy is not None else ZPRLSettings())
        self.policy = None
        self.preprocessor = self.postprocessor = None
        self._spec: DatasetSpec | None = None
        self._stats: dict | None = None

    # -- model construction -------------------------------------------------------------------------
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
            self.policy, self.preprocessor, self.postprocessor = build_posthoc_policy(
                self.hparams.base_policy, datamodule.spec, datamodule.n_obs_steps, datamodule.horizon, self.device,
                self.hparams.policy)
            self._stats = processor_stats(self.preprocessor)  # the source's normalisation, not the data's
            return
        self.policy, self.preprocessor, self.postprocessor = build_policy(
            datamodule.spec, datamodule.stats, datamodule.n_obs_steps, datamodule.horizon, self.device,
            **self.hparams.policy)

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
        """AdamW and a warm-up + decay schedule, from the policy config's optimiser preset (LeRobot's fields)."""
        config = self.policy.config
        optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=config.optimizer_lr,
                                      betas=tuple(config.optimizer_betas), eps=config.optimizer_eps,
                                      weight_decay=config.optimizer_weight_decay)
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 100_000
        scheduler = get_scheduler(config.scheduler_name, optimizer,
                                  num_warmup_steps=min(config.scheduler_warmup_steps, total // 2),
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- rollouts and export ------------------------------------------------------------------------
    def rollout_policy(self, num_envs: int = 1) -> LeRobotRolloutPolicy:
        """The current policy as a RolloutPolicy for the evaluator (eval mode, mean latent).

        ``num_envs`` is not needed: LeRobot's observation and action queues batch over any number of envs.
        """
        self.policy.eval()
        return LeRobotRolloutPolicy(self.policy, self.preprocessor, self.postprocessor, self.device)

    def env_kwargs(self) -> dict:
        """Settings of the evaluation envs: the cameras the policy reads and their size."""
        return env_kwargs_for(self.policy.config)

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
