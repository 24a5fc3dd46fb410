"""Policy-training samples from a LeRobot dataset (hub ``repo_id`` or a local root)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from torch.utils.data import Dataset

from zprl.data.schema import (
    ACTION,
    ACTION_IS_PAD,
    ENV_STATE,
    IMAGE_PREFIX,
    QUALITY_TIERS,
    STATE,
    DatasetSpec,
    action_frame_offsets,
    observation_frame_offsets,
)
from zprl.data.selection import parse_filter_key

QUALITY_COLUMN = "quality_tier"


def _check_root(repo_id: str, root: str | Path | None) -> None:
    """A local ``root`` must hold a whole LeRobot dataset (``meta/info.json`` and ``data/``): LeRobot would
    otherwise try to download the missing parts from the hub and fail with a network error."""
    if root is None:
        return
    root = Path(root)
    generate = ("Generate one with `zprl data generate --task lift --demos 100 --out data/lift_mh` (root "
                "data/lift_mh/lerobot)")
    if not root.exists():
        raise FileNotFoundError(f"LeRobot dataset root {root} does not exist. {generate}, or drop `root` to "
                                f"download `{repo_id}` from the Hugging Face hub.")
    if not root.is_dir():
        raise NotADirectoryError(f"LeRobot dataset root {root} is a file; `root` must be the dataset folder (the one "
                                 "holding meta/ and data/).")
    if not (root / "meta" / "info.json").is_file():
        nested = [p.parent.parent for p in root.glob("*/meta/info.json")]
        hint = (f"It holds a dataset in {nested[0]}: set `root` to that folder." if nested else
                f"{generate}, copy the whole dataset there, or drop `root` to download `{repo_id}` from the hub.")
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: {root / 'meta' / 'info.json'} is missing. {hint}")
    if not (root / "data").is_dir() or not any((root / "data").rglob("*.parquet")):
        raise FileNotFoundError(f"LeRobot dataset {root} has no frames ({root / 'data'} is missing or holds no "
                                f".parquet files): an incomplete copy or an interrupted recording. Copy or "
                                f"generate the dataset again ({generate}).")


def _load_error(repo_id: str, root: str | Path | None, err: Exception) -> RuntimeError:
    if root is not None:
        return RuntimeError(f"Could not read the local LeRobot dataset {root} ({type(err).__name__}: {err}). Its "
                            "files are damaged or from another LeRobot version: generate or copy it again.")
    return RuntimeError(f"Could not load LeRobot dataset {repo_id!r} from the Hugging Face hub ({type(err).__name__}:"
                        f" {err}). Offline? Set `root` to a local copy (HF_HUB_OFFLINE=1), or check the repo id.")


def load_lerobot_dataset(repo_id: str, root: str | Path | None = None, **kwargs) -> LeRobotDataset:
    """``LeRobotDataset(repo_id, root=...)`` with an error that says how to get the data when it is missing."""
    _check_root(repo_id, root)
    try:
        return LeRobotDataset(repo_id, root=root, **kwargs)
    except Exception as err:
        raise _load_error(repo_id, root, err) from err


def load_lerobot_metadata(repo_id: str, root: str | Path | None = None) -> LeRobotDatasetMetadata:
    """``LeRobotDatasetMetadata(repo_id, root=...)`` (info, stats, episode index; no frames), same errors."""
    _check_root(repo_id, root)
    try:
        return LeRobotDatasetMetadata(repo_id, root=root)
    except Exception as err:
        raise _load_error(repo_id, root, err) from err


def quality_episodes(meta: LeRobotDatasetMetadata, quality_filter: str | None, root: str | Path | None = None,
                     video_backend: str | None = "pyav") -> list[int]:
    """Episode indices whose ``quality_tier`` is in ``quality_filter`` (``"expert+noisy"``); None keeps all."""
    tiers = parse_filter_key(quality_filter, QUALITY_TIERS, "quality tier", "the quality tiers")
    if tiers is None:
        return list(range(meta.total_episodes))
    if QUALITY_COLUMN not in meta.features:
        raise KeyError(f"`quality_filter` needs a {QUALITY_COLUMN!r} column, which {meta.repo_id!r} lacks "
                       f"(only zprl-generated datasets have it): set quality_filter to null.")
    dataset = load_lerobot_dataset(meta.repo_id, root=root, video_backend=video_backend)
    wanted = {QUALITY_TIERS.index(t) for t in tiers}
    columns = dataset.hf_dataset.select_columns(["episode_index", QUALITY_COLUMN]).with_format("numpy")[:]
    pairs = zip(columns["episode_index"], columns[QUALITY_COLUMN], strict=True)
    return sorted({int(e) for e, q in pairs if int(q) in wanted})


class LeRobotPolicyDataset(Dataset):
    """A LeRobot dataset as zprl policy samples (see ``zprl.data.schema``).

    ``state_key`` / ``env_state_key`` / ``image_keys`` name the dataset's features; image features are
    renamed ``observation.images.<last name part>`` (``observation.image`` -> ``observation.images.image``).
    ``quality_filter`` (e.g. ``"expert+noisy"``) keeps episodes by the ``quality_tier`` column that
    zprl's generator writes. History and chunks use LeRobot's own ``delta_timestamps``.
    ``cache_in_memory`` reads every sample once and serves later epochs from memory (LeRobot's
    per-sample window queries dominate the step time of small low-dim policies). ``meta`` reuses
    metadata the caller already loaded (``load_lerobot_metadata``).
    """

    def __init__(self, repo_id: str, n_obs_steps: int, horizon: int, root: str | Path | None = None,
                 state_key: str = STATE, env_state_key: str | None = ENV_STATE, image_keys: list[str] = (),
                 episodes: list[int] | None = None, quality_filter: str | None = None, task: str | None = None,
                 video_backend: str | None = "pyav", cache_in_memory: bool = False,
                 meta: LeRobotDatasetMetadata | None = None):
        if horizon < n_obs_steps:
            raise ValueError(f"horizon ({horizon}) must be >= n_obs_steps ({n_obs_steps}).")
        self.repo_id, self.root = repo_id, root
        meta = meta or load_lerobot_metadata(repo_id, root=root)
        features = meta.features
        obs_keys = [k for k in [state_key, env_state_key, *image_keys] if k is not None]
        missing = [k for k in [*obs_keys, ACTION] if k not in features]
        if missing:
            raise KeyError(f"Features {missing} are not in LeRobot dataset {repo_id!r}. Available: "
                           f"{sorted(features)}. Fix `state_key` / `env_state_key` / `image_keys`.")
        if episodes is None:
            episodes = quality_episodes(meta, quality_filter, root, video_backend)
        fps = meta.fps
        delta = {k: [o / fps for o in observation_frame_offsets(n_obs_steps)] for k in obs_keys}
        delta[ACTION] = [o / fps for o in action_frame_offsets(n_obs_steps, horizon)]
        self.dataset = load_lerobot_dataset(repo_id, root=root, episodes=episodes, delta_timestamps=delta,
                                            video_backend=video_backend)
        self.episodes = episodes
        self.key_map = {state_key: STATE, **({env_state_key: ENV_STATE} if env_state_key else {}),
                        **{k: IMAGE_PREFIX + k.split(".")[-1] for k in image_keys}}
        self.fps, self.task = fps, task
        self.cache = [self._read(i) for i in range(len(self.dataset))] if cache_in_memory else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.cache[index] if self.cache is not None else self._read(index)

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        item = self.dataset[index]
        sample = {new: item[old].float() for old, new in self.key_map.items()}
        sample[ACTION] = item[ACTION].float()
        sample[ACTION_IS_PAD] = item[ACTION_IS_PAD].bool()
        return sample

    def spec(self) -> DatasetSpec:
        """Shapes and provenance of this dataset."""
        first = self[0]
        cams = tuple(k.removeprefix(IMAGE_PREFIX) for k in first if k.startswith(IMAGE_PREFIX))
        return DatasetSpec(
            state_dim=first[STATE].shape[-1], env_state_dim=first[ENV_STATE].shape[-1] if ENV_STATE in first else 0,
            action_dim=first[ACTION].shape[-1], camera_names=cams,
            image_shape=tuple(first[IMAGE_PREFIX + cams[0]].shape[1:]) if cams else (3, 84, 84),
            fps=self.fps, task=self.task, num_episodes=len(self.episodes), num_frames=len(self))

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The dataset's own LeRobot statistics, renamed to zprl keys."""
        stats = self.dataset.meta.stats
        if stats is None:
            raise ValueError(f"LeRobot dataset {self.repo_id!r} has no stats.json; recompute it with "
                             f"lerobot's compute_stats or call finalize() after recording.")
        out = {new: stats[old] for old, new in self.key_map.items()}
        out[ACTION] = stats[ACTION]
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in out.items()}
