"""MLflow tracking defaults: a sqlite store in the project folder, a store that is ready (created once, under a
lock) or a server that answers before a run starts, and config logging for LightningCLI."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

# mlflow 3.x refuses plain file stores; a sqlite database next to the project keeps runs local.
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
SQLITE_PREFIX = "sqlite:///"
SERVER_PROBE_TIMEOUT_S = 5.0
STORE_INIT_ATTEMPTS = 5  # tries to open a store another process keeps locked
logger = logging.getLogger(__name__)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working folder), else None."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


def _is_transient_sqlite_error(err: Exception) -> bool:
    # "database is locked": another process holds the write lock beyond sqlite's busy timeout.
    return "database is locked" in str(err) or "database table is locked" in str(err)


def ensure_sqlite_store(uri: str) -> None:
    """Create or check MLflow's tables in the sqlite store ``uri`` once, under an exclusive file lock.

    MLflow creates a fresh store's schema in the first client that opens it, without a lock, so several
    runs starting together on a new store race in the schema migration ("duplicate column name" /
    "table already exists"). Under the lock the first caller creates the schema and the others find it
    complete; a transiently locked database is retried.
    """
    import sqlalchemy.exc
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = sqlite_store_path(uri).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"Cannot create the folder of the MLflow store {uri} ({err.strerror or err}). Set "
                              "MLFLOW_TRACKING_URI to a writable sqlite:///<path>.db.") from err
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"zprl-mlflow-store-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        for attempt in range(STORE_INIT_ATTEMPTS):
            try:
                store = SqlAlchemyStore(uri, str(path.parent / "mlruns"))  # creates / verifies the schema
                store.engine.dispose()
                return
            except sqlalchemy.exc.DatabaseError as err:  # OperationalError (locked), "file is not a database"
                if not _is_transient_sqlite_error(err) or attempt == STORE_INIT_ATTEMPTS - 1:
                    raise RuntimeError(f"Cannot open the MLflow store {uri} ({path}): {err.orig}. If the file is "
                                       "damaged, move it aside (a new store is created) or set MLFLOW_TRACKING_URI "
                                       "to another sqlite:///<path>.db.") from err
                logger.warning("MLflow store %s is locked by another process; retrying.", path)
                time.sleep(0.5 * 2**attempt)


def check_tracking_server(uri: str, timeout: float = SERVER_PROBE_TIMEOUT_S) -> None:
    """Raise ConnectionError naming ``uri`` unless the MLflow server there answers within ``timeout`` seconds.

    MLflow's client retries a dead server for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 with
    exponential backoff, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` = 120 s per request) before it reports anything,
    so one probe of ``/health`` without retries comes first. Any HTTP answer (even 401/404) means the
    server is up.
    """
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(
            f"The MLflow tracking server {uri} is unreachable ({reason}). Start it (e.g. `mlflow server "
            f"--backend-store-uri sqlite:///mlruns.db --port <port>`), fix MLFLOW_TRACKING_URI / the logger's "
            f"tracking_uri, or unset MLFLOW_TRACKING_URI to log to the local store {DEFAULT_TRACKING_URI}.") from err


def prepare_tracking(uri: str | None = None) -> str:
    """Make the store at ``uri`` (default :func:`tracking_uri`) ready before runs log to it; returns the URI.

    sqlite stores are created once under a lock (:func:`ensure_sqlite_store`), servers are probed once
    (:func:`check_tracking_server`); other URIs are left to MLflow.
    """
    uri = uri or tracking_uri()
    if sqlite_store_path(uri) is not None:
        ensure_sqlite_store(uri)
    elif uri.startswith(("http://", "https://")):
        check_tracking_server(uri)
    return uri


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
            values = {k: str(v)[:500] for k, v in params.items() if not k.startswith("config") and k != "ckpt_path"}
            # A resumed run logs into its MLflow run, whose params are fixed: settings a resume may change (the
            # budget, ckpt_path) become tags `resumed.<key>` instead of new param values.
            logged = logger.experiment.get_run(logger.run_id).data.params
            changed = {k: v for k, v in values.items() if k in logged and logged[k] != v}
            logger.log_hyperparams({k: v for k, v in values.items() if k not in logged})
            for key, value in changed.items():
                logger.experiment.set_tag(logger.run_id, f"resumed.{key}", value)
            logger.experiment.set_tag(logger.run_id, "ckpt_path", str(params.get("ckpt_path")))
            logger.experiment.log_artifact(logger.run_id, str(config_path))

