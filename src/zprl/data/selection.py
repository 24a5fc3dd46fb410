"""Which episodes a run uses: filter keys (``"expert+noisy"``) and zprl's one train/validation split rule."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def parse_filter_key(filter_key: str | None, valid: Collection[str], kind: str, valid_names: str) -> list[str] | None:
    """``"expert+noisy"`` -> ``["expert", "noisy"]`` (the union of those selections); None or "" -> None (all).

    Every part must be in ``valid``; otherwise ValueError names the ``kind`` of key (``"filter key"``) and
    the valid ones, introduced by ``valid_names`` (``"the file's masks"``). Used for robomimic filter keys
    (``RobomimicDataModule.filter_key``) and LeRobot quality tiers (``LeRobotDataModule.quality_filter``).
    """
    if not filter_key:
        return None
    keys = list(dict.fromkeys(filter_key.split("+")))
    unknown = [key for key in keys if key not in valid]
    if unknown:
        raise ValueError(f"Unknown {kind} {', '.join(map(repr, unknown))} in {filter_key!r}: {valid_names} are "
                         f"{list(valid)}. Use one of them, or several joined by '+'.")
    return keys


def split_episodes[E](episodes: Sequence[E], val_fraction: float, seed: int) -> tuple[list[E], list[E]]:
    """Random, deterministic, episode-level train/validation split (zprl's one split rule).

    ``episodes`` are robomimic demo names (``demo_3``) or LeRobot episode indices.

    ``round(val_fraction * n)`` of the ``n`` episodes, drawn by ``seed``, validate: at least one when
    ``val_fraction > 0`` and there are two or more episodes, and never all of them (at least one trains).
    ``val_fraction = 0`` validates on none. Both lists keep the order of ``episodes``.

    The robomimic writer stores this split as a file's ``mask/train`` and ``mask/valid``; the DataModules
    apply it to data without those masks (LeRobot datasets, robomimic files without them), while a robomimic
    file's own masks take precedence (see :class:`zprl.data.datamodule.RobomimicDataModule`).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    n = len(episodes)
    num_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        num_val = max(num_val, 1)
    num_val = min(num_val, max(n - 1, 0))
    val_index = set(np.random.default_rng(seed).permutation(n)[:num_val].tolist())
    train = [episode for i, episode in enumerate(episodes) if i not in val_index]
    val = [episode for i, episode in enumerate(episodes) if i in val_index]
    return train, val
