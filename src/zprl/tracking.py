"""MLflow tracking defaults: a sqlite store in the project folder and config logging for LightningCLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

# mlflow 3.x refuses plain file stores; a sqlite database next to the project keeps runs local.
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def mlflow_loggers(trainer: Trainer) -> list[MLFlowLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict/list config -> flat ``a.b.c`` keys (MLflow params are flat strings)."""
    flat: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
    elif isinstance(config, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in config):
        for i, value in enumerate(config):
            flat.update(flatten_config(value, f"{prefix}{i}."))
    else:
        flat[prefix.rstrip(".")] = config
    return flat


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Writes the resolved LightningCLI config to ``default_root_dir/config.yaml`` and logs it to MLflow.

    Lightning's own callback asserts on ``trainer.log_dir``, which MLFlowLogger with a sqlite URI does
    not have; this one logs the file as an artifact and every config leaf as a run parameter.
    """

    def __init__(self, *args, **kwargs):
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        out_dir = Path(trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path = out_dir / self.config_filename
        self.parser.save(self.config, str(config_path), skip_none=False, overwrite=True, multifile=False)
        params = flatten_config(self.config.as_dict())
        for logger in mlflow_loggers(trainer):
            # ckpt_path is a tag: a resumed run (zprl compare) logs into the same MLflow run, whose params are fixed
            logger.log_hyperparams({k: str(v)[:500] for k, v in params.items()
                                    if not k.startswith("config") and k != "ckpt_path"})
            logger.experiment.set_tag(logger.run_id, "ckpt_path", str(params.get("ckpt_path")))
            logger.experiment.log_artifact(logger.run_id, str(config_path))

