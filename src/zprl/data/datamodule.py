"""Lightning DataModules for offline pretraining over robomimic HDF5 files and LeRobot datasets."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from zprl.data.schema import ENV_STATE, STATE, DatasetSpec
from zprl.data.selection import split_episodes


class PolicyDataModule(L.LightningDataModule):
    """Shared loader logic: subclasses choose the train/val episodes and build their datasets.

    ``spec`` (a DatasetSpec) and ``stats`` (LeRobot-format normalisation statistics of the training
    split) are ready after ``setup()``; the pretraining module builds its policy from them.
    ``val_fraction`` and ``seed`` size and draw the validation split of data that has none of its own
    (:func:`zprl.data.selection.split_episodes`); ``val_fraction = 0`` turns validation off.
    """

    def __init__(self, n_obs_steps: int = 2, horizon: int = 16, batch_size: int = 64, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        for name, value, low in (("n_obs_steps", n_obs_steps, 1), ("horizon", horizon, 1),
                                 ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"data.init_args.{name} must be an integer >= {low}, got {value!r}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.init_args.val_fraction must be in [0, 1), got {val_fraction!r}.")
        if horizon < n_obs_steps:
            raise ValueError(f"data.init_args.horizon ({horizon}) must be >= data.init_args.n_obs_steps "
                             f"({n_obs_steps}): the action chunk starts at the first observed frame.")
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.spec: DatasetSpec | None = None
        self.stats: dict | None = None

    def _build(self, episodes: list | None) -> Dataset:
        raise NotImplementedError

    def _train_val_episodes(self) -> tuple[list, list]:
        """The (training, validation) episodes."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_eps, val_eps = self._train_val_episodes()
        self.train_set = self._build(train_eps)
        self.val_set = self._build(val_eps) if val_eps else None
        self.spec = self.train_set.spec()
        self.stats = self.train_set.stats()
        self._check_task()

    def _check_task(self) -> None:
        """Refuse data of another task than ``task`` (when both the config and the data name one)."""
        from zprl.envs import get_task

        configured = getattr(self, "task", None)
        recorded = self.spec.task or (self.spec.env_meta or {}).get("env_name")
        if configured and recorded and get_task(configured).name != get_task(recorded).name:
            raise ValueError(f"data.init_args.task is {configured!r} but the data holds {get_task(recorded).name!r} "
                             f"demos. Set --data.init_args.task={get_task(recorded).name} (or use that task's overlay, "
                             "conf/tasks/<task>_pretrain.yaml) so run names and output folders name the right task.")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=shuffle and len(dataset) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


class RobomimicDataModule(PolicyDataModule):
    """robomimic HDF5 demos (``data/demo_i``) through robomimic's SequenceDataset.

    ``filter_key`` selects demos by the file's masks, several joined by ``+`` (``"expert+noisy"``).
    As in robomimic, a file's ``mask/train`` and ``mask/valid`` are its train/validation split: when the file
    has both, the selected demos of ``train`` train and those of ``valid`` validate (``val_fraction`` and
    ``seed`` then only matter as ``val_fraction = 0``, which trains on every selected demo); a file without
    them is split by :func:`zprl.data.selection.split_episodes`.
    Obs keys are robomimic's (``robot0_eef_pos``, ``object``, ``agentview_image``...). ``task``, when given,
    must be the task of the file's ``env_args`` (configs name their run folders and MLflow runs after it, so a
    Can file under a Lift config is an error, not a Can policy exported as Lift's).
    """

    def __init__(self, hdf5_path: str = "data/lift_mh/demo.hdf5",
                 state_keys: list[str] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"),
                 env_state_keys: list[str] = ("object",), camera_keys: list[str] = (),
                 filter_key: str | None = None, task: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.hdf5_path = Path(hdf5_path)
        self.state_keys = list(state_keys)
        self.env_state_keys = list(env_state_keys)
        self.camera_keys = list(camera_keys)
        self.filter_key = filter_key

    def _train_val_episodes(self) -> tuple[list[str], list[str]]:
        from zprl.data.robomimic_source import reading_hdf5, resolve_filter_key
        from zprl.data.robomimic_writer import validate_robomimic_hdf5

        with reading_hdf5(self.hdf5_path):
            info = validate_robomimic_hdf5(self.hdf5_path)
        masks = info["filter_keys"]
        demos = resolve_filter_key(self.filter_key, masks, info["demos"])
        if self.val_fraction == 0 or not {"train", "valid"} <= masks.keys():
            return split_episodes(demos, self.val_fraction, self.seed)
        train_mask, valid_mask = set(masks["train"]), set(masks["valid"])
        train = [demo for demo in demos if demo in train_mask]
        valid = [demo for demo in demos if demo in valid_mask]
        if not train:
            raise ValueError(f"None of the demos that filter_key={self.filter_key!r} selects in {info['path']} is in "
                             "its 'train' mask. Select training demos, or set data.init_args.val_fraction=0 to "
                             "train on all the selected demos.")
        return train, valid

    def _build(self, episodes: list[str]) -> Dataset:
        from zprl.data.robomimic_source import RobomimicPolicyDataset

        return RobomimicPolicyDataset(self.hdf5_path, self.n_obs_steps, self.horizon, self.state_keys,
                                      self.env_state_keys, self.camera_keys, demos=episodes)


class LeRobotDataModule(PolicyDataModule):
    """A LeRobot dataset: a hub ``repo_id`` (e.g. ``lerobot/pusht``) or a local ``root``.

    ``task`` names the zprl simulator used for rollout evaluation (``lift``, ``pusht``...), since
    LeRobot metadata carries no robomimic env args. ``cache_in_memory`` keeps decoded samples in RAM
    (for small low-dim datasets). A LeRobot dataset has no train/validation split of its own: the episodes
    ``quality_filter`` keeps are split by :func:`zprl.data.selection.split_episodes`.
    """

    def __init__(self, repo_id: str = "zprl/lift_mh", root: str | None = "data/lift_mh/lerobot",
                 state_key: str = STATE, env_state_key: str | None = ENV_STATE,
                 image_keys: list[str] = (), quality_filter: str | None = None, task: str | None = "lift",
                 video_backend: str | None = "pyav", cache_in_memory: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.repo_id = repo_id
        self.root = root
        self.cache_in_memory = cache_in_memory
        self.state_key = state_key
        self.env_state_key = env_state_key
        self.image_keys = list(image_keys)
        self.quality_filter = quality_filter
        self.task = task
        self.video_backend = video_backend
        self.meta = None  # LeRobotDatasetMetadata, loaded once at setup and shared by the splits

    def _train_val_episodes(self) -> tuple[list[int], list[int]]:
        from zprl.data.lerobot_source import load_lerobot_metadata, quality_episodes

        self.meta = load_lerobot_metadata(self.repo_id, root=self.root)
        episodes = quality_episodes(self.meta, self.quality_filter, self.root, self.video_backend)
        return split_episodes(episodes, self.val_fraction, self.seed)

    def _build(self, episodes: list[int]) -> Dataset:
        from zprl.data.lerobot_source import LeRobotPolicyDataset

        return LeRobotPolicyDataset(self.repo_id, self.n_obs_steps, self.horizon, root=self.root,
                                    state_key=self.state_key, env_state_key=self.env_state_key,
                                    image_keys=self.image_keys, episodes=episodes, task=self.task,
                                    video_backend=self.video_backend, cache_in_memory=self.cache_in_memory,
                                    meta=self.meta)
