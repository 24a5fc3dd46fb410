"""Generate scripted demonstration datasets: ``generate_dataset(task, ...)`` with the task's :class:`DemoSource`.

Every task registers one source in :data:`DEMO_SOURCES` (MetaWorld's and PointReach's from their own modules).
The default is a mixed-quality dataset (robomimic HDF5 + LeRobot + report): demos are collected tier by tier
(expert, noisy, poor operators); like robomimic's MH datasets only successful attempts are kept, but every
attempt is counted, and the per-tier success rates are reported.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from zprl.data.episode import Episode
from zprl.data.experts import TIER_IDS, Operator, make_operator
from zprl.data.lerobot_writer import LeRobotWriter, lerobot_features
from zprl.data.robomimic_writer import HDF5_NAME, RobomimicHDF5Writer
from zprl.data.schema import QUALITY_TIERS
from zprl.envs import make_env

LEROBOT_DIR, REPORT_NAME = "lerobot", "report.json"
FPS = 20  # robomimic tasks run OSC_POSE at control_freq 20
TASK_DESCRIPTIONS = {
    "lift": "Lift the red cube off the table.",
    "can": "Pick up the can and place it in its bin.",
    "square": "Fit the square nut onto the square peg.",
}
MAX_ATTEMPTS_PER_DEMO = 20  # give up on a tier whose success rate is below 1/20
logger = logging.getLogger(__name__)


def record_episode(env: gym.Env, operator: Any, seed: int, sim_state: Callable[[], Any] | None = None,
                   raw_obs: Callable[[dict], dict] | None = None,
                   resync: Callable[[dict, dict], dict] | None = None) -> Episode:
    """Run ``operator`` in the time-limited ``env`` from ``reset(seed=seed)`` until the episode ends.

    The env's observations, actions and step outcomes are always recorded; the hooks add what a robomimic
    HDF5 stores (a source writing only LeRobot data passes none).

    Args:
        sim_state: ``() -> state``, the simulator state recorded before each step (the HDF5's ``states``).
        raw_obs: ``obs -> dict``, the observation under robomimic keys, recorded with every observation.
        resync: ``(obs, info) -> obs``, the observation to record after a step in place of the env's.
    """
    obs, _ = env.reset(seed=seed)
    operator.reset(seed)
    env_obs = [obs]
    raws = [raw_obs(obs)] if raw_obs else []
    states, actions, rewards, successes, dones = [], [], [], [], []
    done = False
    while not done:
        if sim_state:
            states.append(sim_state())
        action = operator.act()
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if resync:
            obs = resync(obs, info)
        if raw_obs:
            raws.append(raw_obs(obs))
        env_obs.append(obs)
        actions.append(action)
        rewards.append(reward)
        successes.append(info["is_success"])
        dones.append(done)
    return Episode(tier=operator.tier, seed=seed, env_obs=env_obs, actions=np.asarray(actions),
                   rewards=np.asarray(rewards, dtype=float), successes=np.asarray(successes, dtype=bool),
                   dones=np.asarray(dones, dtype=bool), raw_obs=raws,
                   states=np.asarray(states) if sim_state else None)


def rollout(env: gym.Env, operator: Operator, seed: int) -> Episode:
    """One attempt of ``operator`` in the time-limited robomimic ``env``, with what the robomimic HDF5 stores."""
    base = env.unwrapped

    def sim_state() -> np.ndarray:  # robosuite rebuilds its simulator on hard resets: look it up each time
        return np.array(base.robomimic_env.env.sim.get_state().flatten())

    def resync(obs: dict, info: dict) -> dict:
        if info.get("env_crashed"):
            return obs
        # robosuite observes right after mj_step, whose body poses lag the new joint state by one physics
        # substep; like robomimic's dataset_states_to_obs, re-derive the observation from the simulator
        # state so that reset_to(states[t]) reproduces obs[t] exactly (the dynamics are unaffected)
        return base.reset_to({"states": sim_state()})

    episode = record_episode(env, operator, seed, sim_state=sim_state, raw_obs=lambda obs: base.last_raw_obs,
                             resync=resync)
    episode.model_file = base.get_sim_state()["model"]  # the episode's MuJoCo xml (no reset since)
    return episode


def tier_counts(num_demos: int, tier_fractions: Sequence[float]) -> dict[str, int]:
    """Split ``num_demos`` over the quality tiers by ``tier_fractions`` (largest remainder rounding)."""
    fractions = np.asarray(tier_fractions, dtype=float)
    if fractions.shape != (len(QUALITY_TIERS),) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"tier_fractions must be {len(QUALITY_TIERS)} non-negative numbers for "
                         f"{list(QUALITY_TIERS)} with a positive sum, got {tuple(tier_fractions)}.")
    exact = num_demos * fractions / fractions.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: num_demos - counts.sum()]] += 1
    return dict(zip(QUALITY_TIERS, counts.tolist(), strict=False))


def attempt_seed(seed: int, tier: str, attempt: int) -> int:
    """Independent, reproducible seed of one attempt (env reset and operator noise)."""
    return int(np.random.SeedSequence([seed, TIER_IDS[tier], attempt]).generate_state(1)[0])


OUTPUT_NAMES = frozenset({HDF5_NAME, LEROBOT_DIR, REPORT_NAME})  # what generate_dataset writes in its folder
STAGING_TAGS = (".partial-", ".old-")  # hidden siblings of an output folder: one being written, one being replaced


def _staging_sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}{tag}{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Delete the hidden staging folders a killed run left beside ``out`` (only those of dead processes)."""
    for tag in STAGING_TAGS:
        for path in out.parent.glob(f".{glob.escape(out.name)}{tag}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                logger.warning("Removing %s, left behind by a killed `zprl data generate`.", path)
                shutil.rmtree(path, ignore_errors=True)


def prepare_out_dir(out: Path, overwrite: bool, owned: frozenset[str] = OUTPUT_NAMES) -> None:
    """Check that a dataset may be written to ``out``; nothing is deleted here.

    A non-empty ``out`` is refused unless ``overwrite``, and even then when it holds anything besides a
    dataset this generator writes (``owned`` names): ``--overwrite`` never deletes other files. Leftovers of
    a killed run (hidden ``.<name>.partial-<pid>`` folders beside ``out``) are removed.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output path {out} is a file. Pass another --out (a folder for the dataset).")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"Output directory {out} exists and is not empty. Pass another --out, delete "
                                  "it, or pass --overwrite (overwrite=True) to replace the dataset in it.")
        foreign = sorted(path.name for path in out.iterdir() if path.name not in owned)
        if foreign:
            raise FileExistsError(
                f"Output directory {out} holds files this generator did not write ({foreign[:5]}"
                f"{' ...' if len(foreign) > 5 else ''}), so --overwrite will not replace it: it would delete them. "
                f"Pass another --out, or move those files away first.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = _staging_sibling(out, ".write-test-")
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"Cannot write the dataset to {out} ({err.strerror or err}). "
                              "Pass another --out pointing to a writable directory.") from err
    remove_stale_staging(out)


def publish_dataset(staging: Path, out: Path) -> None:
    """Move the complete dataset folder ``staging`` to ``out``; an old dataset there is moved aside, then deleted.

    Both moves are renames within one folder, so ``out`` is never a partial dataset: a kill between them
    leaves no ``out`` and the old dataset in a hidden ``.<name>.old-<pid>`` folder (removed by the next run).
    """
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = _staging_sibling(out, ".old-")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


def close_quietly(writer: LeRobotWriter | None) -> None:
    """Finalize a LeRobot writer of a failed run now: LeRobot flushes unfinished writers when they are garbage
    collected, which would recreate files in the staging folder after it was deleted."""
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool, owned: frozenset[str] = OUTPUT_NAMES) -> Iterator[Path]:
    """Yield a not-yet-existing staging path beside ``out`` to write the dataset into; publish it to ``out`` only
    when the block completes. On any error or Ctrl-C the staging folder is deleted and ``out`` is untouched."""
    prepare_out_dir(out, overwrite, owned)
    staging = _staging_sibling(out, ".partial-")
    try:
        yield staging
        publish_dataset(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def collect_tier(env: gym.Env, source: DemoSource, request: DemoRequest, tier: str, count: int, writers: Sequence,
                 bar: tqdm) -> dict:
    """Roll out the ``tier`` operator until ``count`` successful demos are written; returns the tier's stats."""
    task, seed = request.task, request.seed
    operator = source.make_operator(env.unwrapped, tier, **request.options)
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


@dataclass(frozen=True)
class DemoRequest:
    """What one :func:`generate_dataset` call asks for, checked; a :class:`DemoSource`'s ``write`` receives it."""

    task: str
    num_demos: int
    out: Path  # the final folder: reports name paths under it, while ``write`` writes into a staging folder
    seed: int
    tier_fractions: tuple[float, ...]
    camera_names: tuple[str, ...]
    camera_size: int
    progress: bool
    options: dict[str, Any]  # the source's generator options, defaults filled in


def write_mixed_quality_dataset(source: DemoSource, request: DemoRequest, staging: Path) -> dict:
    """Collect successful demos tier by tier and write ``demo.hdf5`` (robomimic), ``lerobot/`` and
    ``report.json`` into ``staging``; returns the report, which names the final paths under ``request.out``."""
    start = time.time()
    task, seed = request.task, request.seed
    counts = tier_counts(request.num_demos, request.tier_fractions)
    staging.mkdir()
    env = make_env(task, camera_names=request.camera_names, camera_size=request.camera_size)
    repo_id = f"zprl/{request.out.resolve().name}"
    hdf5 = RobomimicHDF5Writer(staging / HDF5_NAME, source.env_meta(env.unwrapped))
    lerobot = None
    try:
        lerobot = LeRobotWriter(staging / LEROBOT_DIR, repo_id, source.fps,
                                lerobot_features(env.observation_space, env.action_space.shape[0]),
                                source.description)
        with tqdm(total=request.num_demos, desc=f"{task} demos", disable=not request.progress) as bar:
            tiers = {tier: collect_tier(env, source, request, tier, count, (hdf5, lerobot), bar)
                     for tier, count in counts.items()}
        masks = hdf5.close(seed=seed)
        lerobot.close()
    except BaseException:
        close_quietly(lerobot)
        raise
    finally:
        hdf5.file.close()  # idempotent; the staging folder is deleted on failure
        env.close()

    out = request.out
    report = {
        "task": task, "num_demos": request.num_demos, "seed": seed, "tier_fractions": list(request.tier_fractions),
        "camera_names": list(request.camera_names), "camera_size": request.camera_size, "tiers": tiers,
        "total_samples": hdf5.total, "filter_keys": {key: len(names) for key, names in masks.items()},
        "hdf5": str(out / HDF5_NAME), "lerobot_root": str(out / LEROBOT_DIR), "repo_id": repo_id, "fps": source.fps,
        "seconds": round(time.time() - start, 1),
    }
    (staging / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def mixed_quality_summary(report: dict) -> str:
    """What :func:`write_mixed_quality_dataset` wrote, and the command that pretrains on it."""
    return (f"Wrote {report['hdf5']} (robomimic) and {report['lerobot_root']} (LeRobot); this summary is in "
            f"{Path(report['hdf5']).parent / REPORT_NAME}\n"
            f"Next: uv run lightning fit -c conf/pretrain.yaml --data.init_args.hdf5_path={report['hdf5']}")


@dataclass(frozen=True)
class DemoSource:
    """How ``zprl data generate --task <task>`` makes one task's demos (one registered per task in
    :data:`DEMO_SOURCES`). The defaults give a mixed-quality dataset (robomimic HDF5 + LeRobot + report).

    Args:
        make_operator: ``(unwrapped env, tier, **options) -> operator``, an operator having ``tier``,
            ``reset(seed)`` and ``act()``.
        rollout: ``(time-limited env, operator, seed) -> Episode``, one attempt from ``env.reset(seed=seed)``.
        description: the LeRobot task string.
        fps: control frequency, stored in the LeRobot dataset.
        env_meta: ``unwrapped env -> dict`` stored as the HDF5's ``env_args``; ``make_env(env_meta=...)`` rebuilds
            it (None for a source that writes no HDF5).
        write: ``(source, request, staging folder) -> report``: collects the demos and writes the dataset.
        summary: ``report -> str``, what was written and the command that trains on it (printed by the CLI).
        output_names: what ``write`` puts in the output folder, all that ``overwrite`` may replace.
        options: the source's own generator options with their defaults, passed to ``make_operator``.
    """

    make_operator: Callable[..., Any]
    rollout: Callable[[gym.Env, Any, int], Episode]
    description: str
    fps: int
    env_meta: Callable[[gym.Env], dict] | None = None
    write: Callable[[DemoSource, DemoRequest, Path], dict] = write_mixed_quality_dataset
    summary: Callable[[dict], str] = mixed_quality_summary
    output_names: frozenset[str] = OUTPUT_NAMES
    options: Mapping[str, Any] = field(default_factory=dict)


DEMO_SOURCES: dict[str, DemoSource] = {
    task: DemoSource(make_operator=lambda env, tier, task=task: make_operator(env, task, tier), rollout=rollout,
                     description=description, fps=FPS, env_meta=lambda env: env.robomimic_env.serialize())
    for task, description in TASK_DESCRIPTIONS.items()
}


def register_demo_source(task: str, source: DemoSource) -> None:
    """Make ``task`` available to :func:`generate_dataset` (and ``zprl data generate --task``)."""
    DEMO_SOURCES[task] = source


def demo_source(task: str) -> DemoSource:
    """The registered source of ``task``'s demos; an unknown task raises ValueError naming the known ones."""
    if task not in DEMO_SOURCES:
        raise ValueError(f"No scripted expert for task {task!r}. Choose one of {sorted(DEMO_SOURCES)}"
                         + (" (for PushT use the LeRobot hub dataset repo_id='lerobot/pusht')." if task == "pusht"
                            else "."))
    return DEMO_SOURCES[task]


def generate_dataset(task: str, num_demos: int, out: str | Path, seed: int = 0,
                     tier_fractions: Sequence[float] = (0.5, 0.3, 0.2), camera_names: Sequence[str] = (),
                     camera_size: int = 84, progress: bool = True, overwrite: bool = False, **options: Any) -> dict:
    """Make ``num_demos`` scripted demos of ``task`` with its :class:`DemoSource` and write them under ``out``.

    The mixed-quality sources (robomimic and MetaWorld tasks) keep successful attempts only and write
    ``<out>/demo.hdf5`` (robomimic, with tier and train/valid masks), ``<out>/lerobot`` (LeRobot v3, repo_id
    ``zprl/<out name>``) and ``<out>/report.json``, whose report (returned) has per-tier ``attempts``, ``demos``,
    ``success_rate`` and ``mean_length``; PointReach writes one LeRobot dataset of a biased operator at ``out``
    (see :mod:`zprl.data.reach_demos`). ``options`` are the source's own (PointReach: ``bias``).
    Everything is written to a hidden staging folder beside ``out`` that becomes ``out`` only once complete: an
    error, Ctrl-C or kill never leaves a partial dataset at ``out``, and a rerun starts cleanly. ``overwrite``
    replaces a dataset this function wrote, never a folder holding other files.
    """
    source = demo_source(task)
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        owners = {name: sorted(t for t, other in DEMO_SOURCES.items() if name in other.options) for name in unknown}
        raise ValueError(f"Task {task!r} takes no generator option "
                         + ", ".join(f"{name!r} (--{name}, an option of {owners[name] or 'no task'})"
                                     for name in unknown) + ". Drop it.")
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}.")
    tier_counts(num_demos, tier_fractions)  # check the fractions before touching the disk
    request = DemoRequest(task, num_demos, Path(out), seed, tuple(tier_fractions), tuple(camera_names), camera_size,
                          progress, {**source.options, **options})
    with staged_output(request.out, overwrite, source.output_names) as staging:
        report = source.write(source, request, staging)
    return report


# Demo sources of other simulators register themselves on import (as robomimic's algorithm factories do).
import zprl.data.metaworld_experts  # noqa: E402, F401
import zprl.data.reach_demos  # noqa: E402, F401
