"""The ``lightning`` command: LightningCLI over zprl's modules, zprl's progress bar, and a closing summary
that says where a run's results went and which command comes next."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import MLFlowLogger

from zprl.checkpointing import resolve_resume_checkpoint
from zprl.tracking import MLflowSaveConfigCallback, flatten_config, prepare_tracking, tracking_uri

MLFLOW_RUN_KEY = "zprl_mlflow_run_id"  # checkpoint entry: the MLflow run a resumed run continues
# Model settings that may differ between a checkpoint and the resumed run: the budget and evaluation schedule.
RESUMABLE_CHANGES = frozenset({"total_env_steps", "eval_every_env_steps", "eval_episodes", "eval_num_envs"})
LIGHTNING_CKPT_ALIASES = frozenset({"last", "best", "hpc", "registry"})


class ZPRLProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, reading "Epoch 12" instead of "Epoch 12/-2" when epochs are unbounded.

    Online runs (``max_epochs: -1``) stop on their env-step budget and step-limited pretraining runs on
    ``max_steps``; neither has a last epoch to show.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch}".ljust(len(self.validation_description))  # padded as Lightning does


class MLflowRunInCheckpoint(Callback):
    """Stores the MLflow run id in every checkpoint, so ``--ckpt_path`` continues that run (one curve, not two),
    and marks a continued run RUNNING again (a killed run was left RUNNING or FAILED)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path and trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    logger.experiment.update_run(logger.run_id, status="RUNNING")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                checkpoint[MLFLOW_RUN_KEY] = logger.run_id
                return


def _plain(value: Any) -> Any:
    """Config values in one comparable form (tuples as lists, Namespaces as dicts)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def resume_conflicts(checkpoint_hparams: dict, class_path: str, init_args: dict) -> list[str]:
    """Model settings of the command line that differ from the checkpoint's, except :data:`RESUMABLE_CHANGES`."""
    hparams = {key: value for key, value in checkpoint_hparams.items() if key != "_instantiator"}
    saved_class = hparams.pop("_class_path", None)
    conflicts = []
    if saved_class and saved_class != class_path:
        conflicts.append(f"model class: checkpoint {saved_class}, command line {class_path}")
    saved, given = flatten_config(_plain(hparams)), flatten_config(_plain(init_args))
    for key in sorted(saved.keys() & given.keys()):
        if key.split(".")[0] not in RESUMABLE_CHANGES and saved[key] != given[key]:
            conflicts.append(f"{key}: checkpoint {saved[key]!r}, command line {given[key]!r}")
    return conflicts


class ZPRLLightningCLI(LightningCLI):
    """LightningCLI in subclass mode with ``omegaconf+`` parsing: ``${...}`` interpolation is resolved on the
    merged config (all ``-c`` files and command-line overrides), so overlays and overrides propagate.

    A config that names no progress bar (and does not disable it) gets :class:`ZPRLProgressBar`.
    ``--ckpt_path`` differs from Lightning's: an unreadable checkpoint falls back to the previous one kept
    beside it (``zprl.checkpointing``), and instead of silently replacing the command line's model settings
    with the checkpoint's, the run keeps the command line's budget / evaluation schedule and refuses any
    other difference (architecture, steering, method) with an error listing them.
    """

    def add_arguments_to_parser(self, parser) -> None:
        """MLflow is every run's logger unless a config names another: configs set only its names."""
        parser.set_defaults({"trainer.logger": {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
                                                "init_args": {"tracking_uri": tracking_uri(), "log_model": False}}})

    def before_instantiate_classes(self) -> None:
        """Ready every MLflow logger's store (created once under a lock) or server (probed) before the run."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # run=False parses without a subcommand
        loggers = config.trainer.get("logger")
        for logger_config in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger_config, Namespace) and logger_config.get("class_path", "").endswith("MLFlowLogger"):
                # MLFlowLogger's own default: MLFLOW_TRACKING_URI, else a file store MLflow handles itself
                uri = logger_config.init_args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                if uri:
                    prepare_tracking(uri)

    # Overrides LightningCLI's private hook (called while parsing, before anything is instantiated), which
    # torch.loads the checkpoint and overwrites the parsed model settings with its hyper-parameters.
    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_ALIASES:
            return
        resolved = resolve_resume_checkpoint(ckpt_path)
        self.config[subcommand].ckpt_path = str(resolved)
        checkpoint = torch.load(resolved, weights_only=True, map_location="cpu")
        hparams = checkpoint.get("hyper_parameters") or {}
        self._continue_mlflow_run(self.config[subcommand].trainer.get("logger"), checkpoint.get(MLFLOW_RUN_KEY))
        model = self.config[subcommand].model
        conflicts = resume_conflicts(hparams, model.class_path, model.init_args)
        if conflicts:
            raise SystemExit(
                f"error: the command line's model settings differ from those of the checkpoint {resolved}:\n  "
                + "\n  ".join(conflicts)
                + f"\nResuming continues the checkpointed run; only {sorted(RESUMABLE_CHANGES)} and trainer settings "
                "may change. Use the checkpointed run's settings (its config.yaml), or start a new run without "
                "--ckpt_path (and another trainer.default_root_dir).")

    @staticmethod
    def _continue_mlflow_run(loggers: Any, run_id: str | None) -> None:
        """Point an MLflow logger without an explicit ``run_id`` at the checkpoint's run (it resumes that run)."""
        if not run_id:
            return
        for logger_config in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger_config, Namespace) and logger_config.get("class_path", "").endswith("MLFlowLogger") \
                    and not logger_config.init_args.get("run_id"):
                logger_config.init_args.run_id = run_id
                return

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        listed = config.get("callbacks")
        listed = [] if listed is None else listed if isinstance(listed, list) else [listed]
        if config.get("enable_progress_bar") is not False and not any(
                isinstance(cb, ProgressBar) for cb in [*listed, *callbacks]):
            callbacks = [*callbacks, ZPRLProgressBar()]
        callbacks = [*callbacks, MLflowRunInCheckpoint()]
        return super()._instantiate_trainer(config, callbacks)


def run_lightning_cli(args: list[str] | None = None) -> ZPRLLightningCLI:
    """Parse and run ``lightning <subcommand> ...``; after a completed ``fit``, print where its results are."""
    torch.set_float32_matmul_precision("high")
    # Interpolations like ${model.init_args.task} are written relative to the subcommand's config.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    cli = ZPRLLightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MLflowSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf+"},
        args=args,
        auto_configure_optimizers=False,
    )
    if cli.subcommand == "fit" and cli.trainer.is_global_zero and not cli.trainer.interrupted:
        print("\n".join(fit_summary(cli.trainer, cli.model, cli.datamodule)))
    return cli


def fit_summary(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> list[str]:
    """Lines naming a finished run's outputs (policy, checkpoints, MLflow run) and the next command."""
    root = Path(trainer.default_root_dir)
    pretrain = sys.modules.get("zprl.pretrain")
    online = sys.modules.get("zprl.online.module")
    lines = [""]
    next_commands = []
    if pretrain is not None and isinstance(model, pretrain.PretrainModule):
        policy = Path(model.hparams.export_dir or root / "policy")  # where PretrainModule.on_train_end exports
        task = _data_task(datamodule) or "<task>"
        lines += [f"Pretraining finished: {root}", f"  policy (LeRobot format): {policy}"]
        overlay = Path(f"conf/tasks/{task}_online.yaml")  # the task overlay of the online config, where there is one
        configs = "-c conf/zprl_online.yaml" + (f" -c {overlay}" if overlay.exists() else "")
        online_command = (f"uv run lightning fit {configs} --model.init_args.policy_path={policy} "
                          f"--model.init_args.task={task}")
        next_commands = [f"uv run zprl evaluate --policy {policy} --task {task} --episodes 50", online_command]
    elif online is not None and isinstance(model, online.OnlineRLModule):
        lines.append(f"Online run finished ({model.method_name} on {model.hparams.task}): {root}")
        methods = " ".join(f"conf/methods/{m}.yaml" for m in ("zprl", "action_residual", "base_policy"))
        next_commands = [f"uv run zprl compare {methods} --task {model.hparams.task}   # methods x seeds"]
    else:
        lines.append(f"Run finished: {root}")
    last = root / "checkpoints" / "last.ckpt"
    if last.exists():
        lines.append(f"  last checkpoint: {last} (resume with --ckpt_path={last})")
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            client = logger.experiment
            name = client.get_experiment(logger.experiment_id).name
            lines.append(f"  MLflow: experiment {name}, run {logger.run_id} ({client.tracking_uri})")
            next_commands.append(f"uv run mlflow ui --backend-store-uri {client.tracking_uri}   # browse the runs")
    if next_commands:
        lines += ["Next:", *(f"  {command}" for command in next_commands)]
    return lines


def _data_task(datamodule: pl.LightningDataModule | None) -> str | None:
    """The zprl task of the training data (named by the DataModule or by its robomimic env_args), if known."""
    from zprl.envs import get_task

    spec = getattr(datamodule, "spec", None)
    if spec is None:
        return None
    if spec.task:
        return get_task(spec.task).name
    return get_task(spec.env_meta["env_name"]).name if spec.env_meta else None
