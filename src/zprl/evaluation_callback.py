"""Lightning callback that evaluates the module's policy in the simulator during training."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar, WeightAveraging
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info

from zprl.envs import make_vector_env
from zprl.evaluation import EvalResult, Evaluator, RolloutSource
from zprl.progress import rich_eval_progress, tqdm_eval_progress


class RolloutEvalCallback(pl.Callback):
    """Every ``every_n_epochs`` epochs and after the last one, roll out ``pl_module.rollout_policy(num_envs)``.

    ``pl_module`` is a :class:`zprl.evaluation.RolloutSource` (as PretrainModule and OnlineRLModule are).

    With ``task=None`` the env comes from the training data: the DataModule's ``spec`` gives the task,
    the robomimic ``env_args`` stored in the dataset and its cameras, so rollouts match the demos.

    Runs on global rank zero only, in eval mode without gradients, with the averaged weights of any
    ``WeightAveraging`` callback (e.g. ``EMAWeightAveraging``: the weights that get exported), and logs
    ``eval/success_rate``,
    ``eval/mean_return``, ``eval/mean_length``, ``eval/jerk``, ... through ``pl_module.log_dict`` (so any
    Lightning logger, MLflow included, records them). The vector env is built once, on first use, and
    closed at teardown. The env gets the cameras the module's policy reads (``RolloutSource.env_kwargs``);
    ``camera_names``, ``camera_size`` and ``max_episode_steps``, when given, override the module's settings.
    With ``video=True`` the first episode of each round is written under
    ``<default_root_dir>/eval_videos/epoch_<n>/`` and uploaded as an artifact to MLflow loggers.

    Rollouts take minutes on a CPU, so each evaluation announces itself and, with ``progress=True``, shows its
    episodes as a task in Lightning's Rich progress bar (a tqdm bar with other progress bars, none when the
    trainer's bar is disabled).
    """

    def __init__(self, task: str | None = None, every_n_epochs: int = 10, num_episodes: int = 10, num_envs: int = 1,
                 seed: int = 0, video: bool = False, camera_names: tuple[str, ...] | list[str] | None = None,
                 camera_size: int | None = None, max_episode_steps: int | None = None, progress: bool = True):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.task = task
        self.every_n_epochs = every_n_epochs
        self.num_episodes = num_episodes
        self.num_envs = num_envs
        self.seed = seed
        self.video = video
        # Explicit env settings; None: the module's (RolloutSource.env_kwargs)
        self.env_overrides = {key: value for key, value in (("camera_names", camera_names),
                                                             ("camera_size", camera_size),
                                                             ("max_episode_steps", max_episode_steps))
                              if value is not None}
        self.progress = progress
        self.envs = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 and not _is_last_epoch(trainer):
            return
        rank_zero_info(f"epoch {epoch}: rollout evaluation, {self.num_episodes} episodes in {self.num_envs} env(s) ...")
        start = time.monotonic()
        result = self.evaluate(pl_module, video_dir=self._video_dir(trainer, epoch))
        pl_module.log_dict(result.as_metrics("eval/"), rank_zero_only=True)
        rank_zero_info(f"epoch {epoch}: eval success rate {result.success_rate:.2f} over "
                       f"{result.num_episodes} episodes, mean return {result.mean_return:.2f} "
                       f"({time.monotonic() - start:.0f} s)")
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                for path in result.video_paths:
                    logger.experiment.log_artifact(logger.run_id, path, artifact_path=f"eval_videos/epoch_{epoch:04d}")

    def evaluate(self, pl_module: pl.LightningModule, video_dir: str | None = None) -> EvalResult:
        """Roll out the module's policy now (eval mode, no gradients), restoring its training mode after."""
        if not isinstance(pl_module, RolloutSource):
            raise TypeError(f"{type(pl_module).__name__} lacks rollout_policy(num_envs) or env_kwargs(); "
                            "RolloutEvalCallback needs a zprl.evaluation.RolloutSource.")
        if self.envs is None:
            self.envs = make_vector_env(num_envs=self.num_envs, render_mode="rgb_array" if self.video else None,
                                        **self._task_source(pl_module), **pl_module.env_kwargs() | self.env_overrides)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), averaged_weights(pl_module), self._progress(pl_module) as report:
                evaluator = Evaluator(self.envs, self.num_episodes, seed=self.seed, progress=report or False,
                                      video_dir=video_dir)
                return evaluator.evaluate(pl_module.rollout_policy(self.envs.num_envs))
        finally:
            pl_module.train(was_training)

    def _progress(self, pl_module: pl.LightningModule):
        """A task in the trainer's Rich bar while it is showing, a tqdm bar with other bars, else nothing."""
        trainer = getattr(pl_module, "_trainer", None)
        bar = trainer.progress_bar_callback if trainer is not None else None
        if not self.progress or bar is None or bar.is_disabled:
            return nullcontext(None)
        if isinstance(bar, RichProgressBar) and bar.progress is not None:
            return rich_eval_progress(bar, self.num_episodes)
        return tqdm_eval_progress(self.num_episodes, description="rollout eval")

    def _task_source(self, pl_module: pl.LightningModule) -> dict:
        """Task and env metadata: given explicitly, or read from the DataModule's dataset spec."""
        if self.task is not None:
            return {"task": self.task}
        spec = getattr(pl_module.trainer.datamodule, "spec", None)
        if spec is None or (spec.task is None and spec.env_meta is None):
            raise ValueError("RolloutEvalCallback(task=None) needs a DataModule whose spec names the task "
                             "(robomimic env_args or LeRobotDataModule(task=...)); or set `task` explicitly.")
        return {"task": spec.task, "env_meta": spec.env_meta}

    def _video_dir(self, trainer: pl.Trainer, epoch: int) -> str | None:
        if not self.video:
            return None
        return str(Path(trainer.default_root_dir) / "eval_videos" / f"epoch_{epoch:04d}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


@contextmanager
def averaged_weights(pl_module: pl.LightningModule) -> Iterator[None]:
    """Swap in the averaged weights of the trainer's ``WeightAveraging`` callbacks (EMA) for the duration.

    Uses the callback's own swap, as Lightning does around validation epochs.
    """
    trainer = getattr(pl_module, "_trainer", None)
    averagers = [cb for cb in (trainer.callbacks if trainer is not None else [])
                 if isinstance(cb, WeightAveraging) and cb._average_model is not None]
    for averager in averagers:
        averager._swap_models(pl_module)
    try:
        yield
    finally:
        for averager in reversed(averagers):
            averager._swap_models(pl_module)


def _is_last_epoch(trainer: pl.Trainer) -> bool:
    """True after the final training epoch (max_epochs or max_steps reached, or a callback asked to stop)."""
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    return (trainer.should_stop
            or (max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs)
            or (max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps))
