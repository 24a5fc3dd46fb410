"""Policy-training samples from a robomimic HDF5 file, read through robomimic's own SequenceDataset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

# isort: off
import zprl.compat  # noqa: F401  (mujoco_py stand-in, must precede robomimic's imports)
import robomimic.utils.obs_utils as ObsUtils
from robomimic.utils.dataset import SequenceDataset
# isort: on

from zprl.data.robomimic_writer import GENERATE_HINT, validate_robomimic_hdf5
from zprl.data.schema import (
    ACTION,
    ACTION_IS_PAD,
    ENV_STATE,
    IMAGE_PREFIX,
    STATE,
    DatasetSpec,
    array_stats,
    image_stats,
)
from zprl.data.selection import parse_filter_key
from zprl.envs.tasks import SIM_NAME_TO_TASK
from zprl.logging_setup import quiet_stdout

IMAGE_SUFFIX = "_image"
# What h5py raises for a file whose structure or chunks are damaged (bad object headers, symbol tables, inflate).
HDF5_READ_ERRORS = (OSError, RuntimeError, KeyError)


@contextmanager
def reading_hdf5(path: str | Path) -> Iterator[None]:
    """Turn h5py's errors on a damaged file into one that names the file and how to replace it."""
    try:
        yield
    except (FileNotFoundError, PermissionError):  # a missing or unreadable file, already named by the caller
        raise
    except HDF5_READ_ERRORS as err:
        raise ValueError(f"Cannot read the robomimic dataset {path} ({type(err).__name__}: {err}): the file is "
                         f"damaged (an interrupted write or copy?). Regenerate it with `{GENERATE_HINT} --overwrite` "
                         "or download it again.") from err


def resolve_filter_key(filter_key: str | None, masks: dict[str, list[str]], all_demos: list[str]) -> list[str]:
    """Demos selected by a robomimic filter key, in the order of ``all_demos``; ``"expert+noisy"`` takes the
    union of several ``masks`` (``{filter key: demo names}``, as ``validate_robomimic_hdf5`` reads them)."""
    keys = parse_filter_key(filter_key, sorted(masks), "filter key", "the file's masks")
    if keys is None:
        return list(all_demos)
    selected = {demo for key in keys for demo in masks[key]}
    return [demo for demo in all_demos if demo in selected]


class _DemoSubsetSequenceDataset(SequenceDataset):
    """robomimic's SequenceDataset restricted to an explicit demo list (robomimic only takes one mask)."""

    def __init__(self, *args, demos: list[str], **kwargs):
        self._selected_demos = demos
        super().__init__(*args, **kwargs)

    def load_demo_info(self, filter_by_attribute=None, demos=None):
        super().load_demo_info(demos=self._selected_demos if demos is None else demos)


class RobomimicPolicyDataset(Dataset):
    """robomimic HDF5 demos as zprl policy samples (see ``zprl.data.schema``).

    ``state_keys`` are concatenated into ``observation.state``, ``env_state_keys`` into
    ``observation.environment_state``; each ``<cam>_image`` in ``camera_keys`` becomes
    ``observation.images.<cam>``. Frame stacking (``n_obs_steps``) and the action sequence (``horizon``)
    come from robomimic's SequenceDataset with its start/end padding, which matches LeRobot's.
    """

    def __init__(self, hdf5_path: str | Path, n_obs_steps: int, horizon: int,
                 state_keys: list[str], env_state_keys: list[str], camera_keys: list[str] = (),
                 demos: list[str] | None = None):
        with reading_hdf5(hdf5_path):
            info = validate_robomimic_hdf5(hdf5_path)
        missing = [k for k in [*state_keys, *env_state_keys, *camera_keys] if k not in info["obs_keys"]]
        if missing:
            raise KeyError(f"Observation keys {missing} are not in {hdf5_path}. Available obs keys: "
                           f"{sorted(info['obs_keys'])}. Fix `state_keys` / `env_state_keys` / `camera_keys`.")
        if horizon < n_obs_steps:
            raise ValueError(f"horizon ({horizon}) must be >= n_obs_steps ({n_obs_steps}).")
        self.n_obs_steps = n_obs_steps
        self.state_keys = list(state_keys)
        self.env_state_keys = list(env_state_keys)
        self.camera_keys = list(camera_keys)
        self.demos = list(demos) if demos is not None else list(info["demos"])
        with quiet_stdout():  # robomimic prints the obs spec
            ObsUtils.initialize_obs_utils_with_obs_specs(
                {"obs": {"low_dim": [*self.state_keys, *self.env_state_keys], "rgb": self.camera_keys}})
        with reading_hdf5(hdf5_path):
            self.sequences = _DemoSubsetSequenceDataset(
                hdf5_path=str(hdf5_path),
                obs_keys=[*self.state_keys, *self.env_state_keys, *self.camera_keys],
                dataset_keys=("actions",),
                frame_stack=n_obs_steps,
                seq_length=horizon - n_obs_steps + 1,
                pad_frame_stack=True,
                pad_seq_length=True,
                get_pad_mask=True,
                hdf5_cache_mode="low_dim",
                hdf5_use_swmr=True,
                load_next_obs=False,
                demos=self.demos,
            )
        self.env_meta = info["env_meta"]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with reading_hdf5(self.sequences.hdf5_path):  # images are read from the file on demand
            item = self.sequences[index]
        obs = item["obs"]
        n = self.n_obs_steps
        sample = {
            STATE: torch.from_numpy(np.concatenate([obs[k][:n] for k in self.state_keys], -1).astype(np.float32)),
            ENV_STATE: torch.from_numpy(
                np.concatenate([obs[k][:n] for k in self.env_state_keys], -1).astype(np.float32)),
            ACTION: torch.from_numpy(np.asarray(item["actions"], dtype=np.float32)),
            ACTION_IS_PAD: torch.from_numpy(~item["pad_mask"][:, 0].astype(bool)),
        }
        for key in self.camera_keys:
            frames = torch.from_numpy(np.ascontiguousarray(obs[key][:n]))  # (n, H, W, 3) uint8
            sample[IMAGE_PREFIX + key.removesuffix(IMAGE_SUFFIX)] = frames.permute(0, 3, 1, 2).float() / 255.0
        return sample

    def spec(self) -> DatasetSpec:
        """Shapes, task and env metadata of this dataset."""
        first = self[0]
        cams = tuple(k.removesuffix(IMAGE_SUFFIX) for k in self.camera_keys)
        image_shape = tuple(first[IMAGE_PREFIX + cams[0]].shape[1:]) if cams else (3, 84, 84)
        return DatasetSpec(
            state_dim=first[STATE].shape[-1], env_state_dim=first[ENV_STATE].shape[-1],
            action_dim=first[ACTION].shape[-1], camera_names=cams, image_shape=image_shape, fps=20,
            task=SIM_NAME_TO_TASK.get(self.env_meta["env_name"]), env_meta=self.env_meta,
            num_episodes=len(self.demos), num_frames=len(self))

    def stats(self, max_image_frames: int = 2000) -> dict[str, dict[str, np.ndarray]]:
        """LeRobot-format normalisation statistics over this dataset's demos."""
        path = self.sequences.hdf5_path
        try:
            with reading_hdf5(path), h5py.File(path, "r") as f:
                demos = [f[f"data/{d}"] for d in self.demos]
                def columns(keys: list[str]) -> np.ndarray:
                    return np.concatenate([np.concatenate([d[f"obs/{k}"][:] for k in keys], -1) for d in demos])

                stats = {STATE: array_stats(columns(self.state_keys)),
                         ENV_STATE: array_stats(columns(self.env_state_keys)),
                         ACTION: array_stats(np.concatenate([d["actions"][:] for d in demos]))}
                stride = max(1, sum(int(d.attrs["num_samples"]) for d in demos) // max_image_frames)
                for key in self.camera_keys:
                    frames = np.concatenate([d[f"obs/{key}"][::stride] for d in demos])
                    stats[IMAGE_PREFIX + key.removesuffix(IMAGE_SUFFIX)] = image_stats(frames)
        except ValueError as err:  # non-finite values (a damaged file): name it
            if str(path) in str(err):
                raise
            raise ValueError(f"{path}: {err}") from err
        return stats
