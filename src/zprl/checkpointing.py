"""Crash-safe Lightning checkpoints: atomic writes in the checkpoint's own folder, the previous ``last.ckpt`` kept,
saves every N iterations and/or every T minutes, and a resume path that falls back to the previous checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

logger = logging.getLogger(__name__)
PREVIOUS_SUFFIX = ".prev"  # last.ckpt -> last.prev.ckpt


def previous_path(path: str | Path) -> Path:
    """Where :class:`SafeModelCheckpoint` keeps the checkpoint that ``path`` replaced (``last.prev.ckpt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PREVIOUS_SUFFIX}{path.suffix}")


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a resumable checkpoint (missing, empty, truncated), or None if it looks whole.

    ``torch.save`` writes a zip archive whose central directory comes last, so a truncated file fails
    the zip check without reading the tensors.
    """
    path = Path(path)
    if not path.is_file():
        return "it does not exist"
    if path.stat().st_size == 0:
        return "it is empty"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "it is a zip archive but not a torch checkpoint"
    except (zipfile.BadZipFile, OSError) as err:
        return f"it is truncated or corrupt ({err})"
    return None


def resolve_resume_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a whole checkpoint, else the previous one kept beside it, with a warning saying so.

    Raises FileNotFoundError naming both files when neither can be resumed from.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    previous = previous_path(path)
    previous_problem = checkpoint_problem(previous)
    if previous_problem is None:
        logger.warning("Cannot resume from %s: %s. Resuming from the previous checkpoint %s instead (the steps "
                       "since it are repeated).", path, problem, previous)
        return previous
    raise FileNotFoundError(
        f"Cannot resume from {path}: {problem}; the previous checkpoint {previous} cannot be used either "
        f"({previous_problem}). Pass another --ckpt_path from {path.parent}, or start the run afresh.")


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files survive a crash, a kill or a full disk mid-save.

    Every checkpoint is written to a temporary file in its own folder and moved into place with
    ``os.replace`` (atomic within one filesystem; Lightning's own writer stages the file in the system
    temp folder, which is a non-atomic copy when that is another filesystem). When a file is replaced
    (``last.ckpt``) the old one is kept as ``last.prev.ckpt``, so there is always a whole checkpoint to
    resume from (:func:`resolve_resume_checkpoint`).

    Args:
        every_n_iterations: save every this many training iterations (``training_step`` calls; with manual
            optimisation, as in the online module, Lightning's ``every_n_train_steps`` counts optimiser steps
            and its ``train_time_interval`` is never checked). 0 or None: off.
        train_time_interval: also save when this much wall time has passed since the last save
            (``"0:05:00"`` or a ``timedelta``); both triggers may be set.
        keep_previous: keep the replaced checkpoint as ``<name>.prev.ckpt``.
        **kwargs: ``ModelCheckpoint`` arguments (``dirpath``, ``save_last``, ``save_top_k``, ``every_n_epochs``...).
    """

    def __init__(self, every_n_iterations: int | None = None, train_time_interval: timedelta | str | None = None,
                 keep_previous: bool = True, **kwargs):
        if kwargs.get("every_n_train_steps"):
            raise ValueError("SafeModelCheckpoint counts iterations: use every_n_iterations instead of "
                             "every_n_train_steps.")
        if every_n_iterations is not None and every_n_iterations < 0:
            raise ValueError(f"every_n_iterations must be >= 0, got {every_n_iterations}.")
        if isinstance(train_time_interval, str):
            parts = train_time_interval.split(":")
            try:
                hours, minutes, seconds = (float(part) for part in parts)
            except ValueError:
                raise ValueError(f"train_time_interval must be 'H:MM:SS' (e.g. '0:05:00'), got "
                                 f"{train_time_interval!r}.") from None
            train_time_interval = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        triggered = bool(every_n_iterations) or train_time_interval is not None
        super().__init__(every_n_train_steps=0 if triggered else None, **kwargs)
        self.every_n_iterations = every_n_iterations or 0
        self.save_interval = train_time_interval
        self.keep_previous = keep_previous
        self._last_save_time: float | None = None
        self._last_iteration_saved = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for staging in Path(self.dirpath).glob(".*.tmp*"):  # left by a run killed while saving
                if staging.name.rsplit(".tmp", 1)[-1] != str(os.getpid()):
                    staging.unlink(missing_ok=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the final state as ``last.ckpt``; Lightning only does when nothing was saved during the run, which
        leaves a time-triggered run's last minutes out of its checkpoint."""
        if self.save_last and self._iteration(trainer) != self._last_iteration_saved \
                and not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @staticmethod
    def _iteration(trainer: pl.Trainer) -> int:
        return trainer.fit_loop.epoch_loop.total_batch_idx + 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        iteration = self._iteration(trainer)
        now = time.monotonic()
        due_iterations = self.every_n_iterations > 0 and iteration % self.every_n_iterations == 0
        due_time = self.save_interval is not None and self._last_save_time is not None \
            and now - self._last_save_time >= self.save_interval.total_seconds()
        due_time = trainer.strategy.broadcast(due_time)  # one decision for all ranks
        if not (due_iterations or due_time) or iteration == self._last_iteration_saved:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_save_time = now

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        target = Path(filepath)
        staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            trainer.save_checkpoint(staging, self.save_weights_only)
        except BaseException:
            if trainer.is_global_zero:
                staging.unlink(missing_ok=True)
            raise
        if trainer.is_global_zero:
            if self.keep_previous and target.is_file():
                previous = previous_path(target)
                staged_previous = previous.with_name(f".{previous.name}.tmp{os.getpid()}")
                try:  # a hard link keeps `target` in place until the new file replaces it
                    os.link(target, staged_previous)
                except OSError:  # filesystems without hard links
                    shutil.copy2(target, staged_previous)
                os.replace(staged_previous, previous)
            os.replace(staging, target)
        trainer.strategy.barrier("SafeModelCheckpoint")
        # what ModelCheckpoint._save_checkpoint records, once the file is in place
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        self._last_iteration_saved = self._iteration(trainer)
        if trainer.is_global_zero:
            for pl_logger in trainer.loggers:
                pl_logger.after_save_checkpoint(proxy(self))

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            previous_path(filepath).unlink(missing_ok=True)
