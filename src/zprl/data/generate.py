"""Generate a mixed-quality scripted demonstration dataset (robomimic HDF5 + LeRobot + report).

Demos are collected tier by tier (expert, noisy, poor operators); like robomimic's MH datasets only
successful attempts are kept, but every attempt is counted, and the per-tier success rates are reported.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from zprl.data.experts import QUALITY_TIERS, TIER_IDS, Operator, make_operator
from zprl.data.lerobot_writer import LeRobotWriter, lerobot_features
from zprl.data.robomimic_writer import HDF5_NAME, RobomimicHDF5Writer
from zprl.envs import make_env

LEROBOT_DIR, REPORT_NAME = "lerobot", "report.json"
FPS = 20  # robomimic tasks run OSC_POSE at control_freq 20
TASK_DESCRIPTIONS = {
    "lift": "Lift the red cube off the table.",
    "can": "Pick up the can and place it in its bin.",
    "square": "Fit the square nut onto the square peg.",
}
MAX_ATTEMPTS_PER_DEMO = 20  # give up on a tier whose success rate is below 1/20


@dataclass
class Episode:
    """One rollout of T steps. ``raw_obs`` (robomimic keys) and ``env_obs`` (env keys) hold T+1 observations."""

    tier: str
    seed: int
    model_file: str  # MuJoCo xml the episode ran in (robosuite re-samples object sizes on reset)
    raw_obs: list[dict[str, np.ndarray]]
    env_obs: list[dict[str, np.ndarray]]
    states: np.ndarray  # (T, state_dim) flattened MuJoCo state before each step, as robomimic stores it
    actions: np.ndarray  # (T, action_dim)
    rewards: np.ndarray  # (T,)
    successes: np.ndarray  # (T,) task success after each step
    dones: np.ndarray  # (T,)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(len(self) and self.successes[-1])


@dataclass(frozen=True)
class DemoSource:
    """How :func:`generate_dataset` makes one task's demos (one registered per task in :data:`DEMO_SOURCES`).

    Args:
        make_operator: ``(unwrapped env, tier) -> operator``, an operator having ``tier``, ``reset(seed)``, ``act()``.
        rollout: ``(time-limited env, operator, seed) -> Episode``, one attempt from ``env.reset(seed=seed)``.
        env_meta: ``unwrapped env -> dict`` stored as the HDF5's ``env_args``; ``make_env(env_meta=...)`` rebuilds it.
        description: the LeRobot task string.
        fps: control frequency, stored in the LeRobot dataset.
    """

    make_operator: Callable[[gym.Env, str], Any]
    rollout: Callable[[gym.Env, Any, int], Episode]
    env_meta: Callable[[gym.Env], dict]
    description: str
    fps: int


def rollout(env: gym.Env, operator: Operator, seed: int) -> Episode:
    """Run ``operator`` in the time-limited robomimic ``env`` from ``reset(seed=seed)`` until it ends."""
    obs, _ = env.reset(seed=seed)
    operator.reset(seed)
    base = env.unwrapped
    sim = base.robomimic_env.env.sim
    model_file = base.get_sim_state()["model"]
    raw_obs, env_obs = [base.last_raw_obs], [obs]
    states, actions, rewards, successes, dones = [], [], [], [], []
    done = False
    while not done:
        states.append(np.array(sim.get_state().flatten()))
        action = operator.act()
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if not info.get("env_crashed"):
            # robosuite observes right after mj_step, whose body poses lag the new joint state by one physics
            # substep; like robomimic's dataset_states_to_obs, re-derive the observation from the simulator
            # state so that reset_to(states[t]) reproduces obs[t] exactly (the dynamics are unaffected)
            obs = base.reset_to({"states": sim.get_state().flatten()})
        raw_obs.append(base.last_raw_obs)
        env_obs.append(obs)
        actions.append(action)
        rewards.append(reward)
        successes.append(info["is_success"])
        dones.append(done)
    return Episode(operator.tier, seed, model_file, raw_obs, env_obs, np.asarray(states), np.asarray(actions),
                   np.asarray(rewards, dtype=float), np.asarray(successes, dtype=bool), np.asarray(dones, dtype=bool))


DEMO_SOURCES: dict[str, DemoSource] = {
    task: DemoSource(make_operator=lambda env, tier, task=task: make_operator(env, task, tier), rollout=rollout,
                     env_meta=lambda env: env.robomimic_env.serialize(), description=description, fps=FPS)
    for task, description in TASK_DESCRIPTIONS.items()
}


def register_demo_source(task: str, source: DemoSource) -> None:
    """Make ``task`` available to :func:`generate_dataset` (and ``zprl data generate --task``)."""
    DEMO_SOURCES[task] = source


def tier_counts(num_demos: int, tier_fractions: Sequence[float]) -> dict[str, int]:
    """Split ``num_demos`` over the quality tiers by ``tier_fractions`` (largest remainder rounding)."""
    fractions = np.asarray(tier_fractions, dtype=float)
    if fractions.shape != (len(QUALITY_TIERS),) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"tier_fractions must be {len(QUALITY_TIERS)} non-negative numbers for "
                         f"{list(QUALITY_TIERS)} with a positive sum, got {tuple(tier_fractions)}.")
    exact = num_demos * fractions / fractions.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: num_demos - counts.sum()]] += 1
    return dict(zip(QUALITY_TIERS, counts.tolist()))


def attempt_seed(seed: int, tier: str, attempt: int) -> int:
    """Independent, reproducible seed of one attempt (env reset and operator noise)."""
    return int(np.random.SeedSequence([seed, TIER_IDS[tier], attempt]).generate_state(1)[0])


def remove_outputs(out: Path) -> None:
    """Delete what :func:`generate_dataset` writes in ``out``, and nothing else."""
    for path in (out / HDF5_NAME, out / LEROBOT_DIR, out / REPORT_NAME):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` (which removes only our own outputs)."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"Output directory {out} exists and is not empty. Pass another --out, delete "
                                  "it, or pass --overwrite (overwrite=True) to replace the dataset in it.")
        remove_outputs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"Cannot write the dataset to {out} ({err.strerror or err}). "
                              "Pass another --out pointing to a writable directory.") from err


def collect_tier(env: gym.Env, task: str, tier: str, count: int, seed: int, writers: Sequence, bar: tqdm) -> dict:
    """Roll out the ``tier`` operator until ``count`` successful demos are written; returns the tier's stats."""
    source = DEMO_SOURCES[task]
    operator = source.make_operator(env.unwrapped, tier)
    attempts, lengths = 0, []
    while len(lengths) < count:
        if attempts >= MAX_ATTEMPTS_PER_DEMO * count:
            raise RuntimeError(f"The {tier!r} operator succeeded {len(lengths)} times in {attempts} attempts on "
                               f"{task!r}; lower its share in tier_fractions.")
        episode = source.rollout(env, operator, attempt_seed(seed, tier, attempts))
        attempts += 1
        if episode.success:
            for writer in writers:
                writer.write_episode(episode)
            lengths.append(len(episode))
            bar.update()
        bar.set_postfix(tier=tier, attempts=attempts)
    return {"demos": count, "attempts": attempts, "success_rate": count / attempts if attempts else None,
            "mean_length": float(np.mean(lengths)) if lengths else None}


def generate_dataset(task: str, num_demos: int, out: str | Path, seed: int = 0,
                     tier_fractions: Sequence[float] = (0.5, 0.3, 0.2), camera_names: Sequence[str] = (),
                     camera_size: int = 84, progress: bool = True, overwrite: bool = False) -> dict:
    """Collect ``num_demos`` successful scripted demos of ``task`` and write them under ``out``.

    Writes ``<out>/demo.hdf5`` (robomimic, with tier and train/valid masks), ``<out>/lerobot``
    (LeRobot v3, repo_id ``zprl/<out name>``) and ``<out>/report.json``; returns the report, with
    per-tier ``attempts``, ``demos``, ``success_rate`` and ``mean_length``. On failure nothing is left
    behind in ``out``.
    """
    if task not in DEMO_SOURCES:
        raise ValueError(f"No scripted expert for task {task!r}. Choose one of {sorted(DEMO_SOURCES)}"
                         + (" (for PushT use the LeRobot hub dataset repo_id='lerobot/pusht')." if task == "pusht"
                            else "."))
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}.")
    counts = tier_counts(num_demos, tier_fractions)
    out = Path(out)
    prepare_out_dir(out, overwrite)

    start = time.time()
    source = DEMO_SOURCES[task]
    env = make_env(task, camera_names=tuple(camera_names), camera_size=camera_size)
    repo_id = f"zprl/{out.resolve().name}"
    hdf5 = RobomimicHDF5Writer(out / HDF5_NAME, source.env_meta(env.unwrapped))
    try:
        lerobot = LeRobotWriter(out / LEROBOT_DIR, repo_id, source.fps,
                                lerobot_features(env.observation_space, env.action_space.shape[0]),
                                source.description)
        with tqdm(total=num_demos, desc=f"{task} demos", disable=not progress) as bar:
            tiers = {tier: collect_tier(env, task, tier, count, seed, (hdf5, lerobot), bar)
                     for tier, count in counts.items()}
        masks = hdf5.close(seed=seed)
        lerobot.close()
    except BaseException:  # incl. KeyboardInterrupt: leave no partial dataset behind
        hdf5.file.close()
        remove_outputs(out)
        raise
    finally:
        env.close()

    report = {
        "task": task, "num_demos": num_demos, "seed": seed, "tier_fractions": list(tier_fractions),
        "camera_names": list(camera_names), "camera_size": camera_size, "tiers": tiers,
        "total_samples": hdf5.total, "filter_keys": {key: len(names) for key, names in masks.items()},
        "hdf5": str(out / HDF5_NAME), "lerobot_root": str(out / LEROBOT_DIR), "repo_id": repo_id, "fps": source.fps,
        "seconds": round(time.time() - start, 1),
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


# Demo sources of other simulators register themselves on import (as robomimic's algorithm factories do).
import zprl.data.metaworld_experts  # noqa: F401
