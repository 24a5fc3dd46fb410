"""Write and validate robomimic-format HDF5 demonstration files.

Layout (as robomimic's own datasets, readable by ``robomimic.utils.dataset.SequenceDataset``)::

    data                attrs: total (number of samples), env_args (json env meta)
    data/demo_<i>       attrs: num_samples, model_file (MuJoCo xml of the episode), quality_tier, seed
        obs/<key>, next_obs/<key>, actions, rewards, dones, states
    mask/<filter_key>   demo names (bytes): one per quality tier, train / valid, <tier>_train / <tier>_valid
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from zprl.data.episode import Episode
from zprl.data.selection import split_episodes

GENERATE_HINT = "zprl data generate --task lift --demos 100 --out data/lift_mh"
HDF5_NAME = "demo.hdf5"


def demo_index(name: str) -> int:
    """``demo_12`` -> 12 (robomimic orders demos by this index)."""
    return int(name[5:])


class RobomimicHDF5Writer:
    """Streams episodes into a robomimic HDF5 file; :meth:`close` writes ``total`` and the filter masks."""

    def __init__(self, path: str | Path, env_meta: dict):
        self.file = h5py.File(path, "w")
        self.data = self.file.create_group("data")
        self.data.attrs["env_args"] = json.dumps(env_meta)
        self.demo_tiers: dict[str, str] = {}
        self.total = 0

    def write_episode(self, episode: Episode) -> str:
        """Append one episode as ``data/demo_<i>``; returns the demo name."""
        name = f"demo_{len(self.demo_tiers)}"
        group = self.data.create_group(name)
        for obs_group, frames in (("obs", episode.raw_obs[:-1]), ("next_obs", episode.raw_obs[1:])):
            for key in frames[0]:
                values = np.stack([frame[key] for frame in frames])
                group.create_dataset(f"{obs_group}/{key}", data=values,
                                     compression="gzip" if values.dtype == np.uint8 else None)
        group.create_dataset("actions", data=episode.actions.astype(np.float64))
        group.create_dataset("rewards", data=episode.rewards.astype(np.float64))
        group.create_dataset("dones", data=episode.dones.astype(np.int64))
        group.create_dataset("states", data=episode.states)
        group.attrs["num_samples"] = len(episode)
        group.attrs["model_file"] = episode.model_file
        group.attrs["quality_tier"] = episode.tier  # extra attrs (ignored by robomimic): tier and the seed
        group.attrs["seed"] = episode.seed  # that reproduces the demo with zprl.data.generate.rollout
        self.demo_tiers[name] = episode.tier
        self.total += len(episode)
        return name

    def close(self, valid_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
        """Write ``data.attrs["total"]`` and the non-empty filter masks, close the file; returns the masks.

        ``train`` / ``valid`` are :func:`zprl.data.selection.split_episodes` of the demos.
        """
        demos = list(self.demo_tiers)
        train, valid = split_episodes(demos, valid_fraction, seed)
        masks = {"train": train, "valid": valid}
        for tier in dict.fromkeys(self.demo_tiers.values()):
            masks[tier] = [d for d in demos if self.demo_tiers[d] == tier]
            masks[f"{tier}_train"] = [d for d in train if self.demo_tiers[d] == tier]
            masks[f"{tier}_valid"] = [d for d in valid if self.demo_tiers[d] == tier]
        masks = {key: names for key, names in masks.items() if names}
        for key, names in masks.items():
            self.file.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
        self.data.attrs["total"] = self.total
        self.file.close()
        return masks


def validate_robomimic_hdf5(path: str | Path) -> dict:
    """Check that ``path`` (a robomimic ``.hdf5`` file, or a folder holding ``demo.hdf5``) is a usable dataset.

    Returns ``dict(env_meta, demos, filter_keys, obs_keys, path)``: the environment metadata, demo names in
    robomimic order, ``{filter_key: [demo names]}``, the observation keys of the first demo and the file.
    Raises FileNotFoundError or ValueError with the command that produces a valid file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / HDF5_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No robomimic dataset at {path}. Generate one with `{GENERATE_HINT}` (writes data/lift_mh/{HDF5_NAME}) "
            "or download a robomimic dataset (see data/README.md).")
    corrupt = (f"{path} is not a readable HDF5 file (corrupt or incomplete download). Delete it and regenerate "
               f"it with `{GENERATE_HINT} --overwrite` or download it again.")
    if not h5py.is_hdf5(path):
        raise ValueError(corrupt)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{corrupt} ({err})") from err
    with f:
        if "data" not in f:
            raise ValueError(f"{path} has no 'data' group, so it is not a robomimic dataset. "
                             f"Generate one with `{GENERATE_HINT}`.")
        if "env_args" not in f["data"].attrs:
            raise ValueError(f"{path} has no data.attrs['env_args'] (environment metadata); robomimic datasets "
                             "from before v0.1 need converting with robomimic/scripts/conversion.")
        env_meta = json.loads(f["data"].attrs["env_args"])
        demos = sorted(f["data"].keys(), key=demo_index)
        if not demos:
            raise ValueError(f"{path} holds no demonstrations under 'data'. Generate one with `{GENERATE_HINT}`.")
        first = f["data"][demos[0]]
        if "obs" not in first or "actions" not in first:
            raise ValueError(
                f"{path}:data/{demos[0]} has no 'obs' or 'actions'. Raw robomimic files (demo_v141.hdf5) store only "
                "simulator states: extract observations with robomimic/scripts/dataset_states_to_obs.py, or "
                "download the low_dim_v141.hdf5 variant.")
        obs_keys = list(first["obs"].keys())
        filter_keys = {key: sorted((name.decode("utf-8") for name in f["mask"][key][()]), key=demo_index)
                       for key in f.get("mask", {})}
    return {"env_meta": env_meta, "demos": demos, "filter_keys": filter_keys, "obs_keys": obs_keys, "path": path}
