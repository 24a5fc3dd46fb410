"""Fault-and-bad-input probe: how zprl answers wrong arguments, damaged files and killed runs.

Every bad input is tried once, in process, on real files (a tiny PushT policy, a PointReach LeRobot dataset, a
one-demo Lift HDF5, a 64-env-step online run, a real MLflow sqlite store) and classified:

- clear: an error whose message names what is wrong (the file, parameter or URI) -- the words listed per case;
- unclear: an error that does not (a raw library error, or one that misnames the cause);
- silent: no error at all (the command "succeeds" with a wrong or lost result).

Faults (kill -9 / Ctrl-C of a data generation or an online run, truncated checkpoints, concurrent first use of
an MLflow store) are run for real and count as survived when no data or run is lost. Usage:

    uv run python benchmarks/fault_probe.py            # ~5 min on 2 CPU cores
    uv run python benchmarks/fault_probe.py --verbose  # one line per case
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
TINY = {"down_dims": (16, 32), "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "vib_hidden_dim": 32,
        "z_dim": 4, "num_inference_steps": 3, "device": "cpu"}
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
ONLINE_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: -1
  max_steps: -1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: zprl.checkpointing.SafeModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true, save_top_k: 0, every_n_iterations: 1}}
model:
  class_path: zprl.online.module.OnlineRLModule
  init_args:
    policy_path: {policy}
    task: pusht
    num_envs: 2
    asynchronous: false
    max_episode_steps: 20
    total_env_steps: {steps}
    env_steps_per_iter: 32
    utd_ratio: 0.5
    warmup_transitions: 4
    buffer_capacity: 100
    eval_every_env_steps: 64
    eval_episodes: 2
    sac: {{hidden_dims: [32, 32], batch_size: 8}}
"""


@dataclass
class Case:
    """One bad input: ``run`` must raise an error mentioning every word of ``mentions``."""

    category: str
    name: str
    run: Callable[[], object]
    mentions: tuple[str, ...] = ()
    check: Callable[[], bool] | None = None  # extra: nothing was lost (e.g. a foreign file is still there)


@dataclass
class Fault:
    """One fault: ``run`` returns True when no data or run was lost."""

    name: str
    run: Callable[[], bool]


@dataclass
class Fixtures:
    tmp: Path
    policy: Path = field(init=False)
    reach: Path = field(init=False)
    lift_hdf5: Path = field(init=False)
    online: Path = field(init=False)
    online_config: Path = field(init=False)


def _stats(low, high):
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return {"min": low, "max": high, "mean": (low + high) / 2, "std": (high - low) / 4}


def build_fixtures(tmp: Path) -> Fixtures:
    from zprl.cli import lightning_main
    from zprl.data.generate import generate_dataset
    from zprl.data.reach_demos import generate_reach_dataset
    from zprl.policy import ZPRLPolicy, make_zprl_pre_post_processors, zprl_config_for

    fx = Fixtures(tmp)
    torch.manual_seed(0)
    config = zprl_config_for(2, 16, 2, **TINY)
    stats = {"observation.state": _stats([0, 0], [512, 512]),
             "observation.environment_state": _stats([0] * 16, [512] * 16), "action": _stats([0, 0], [512, 512])}
    fx.policy = tmp / "policy"
    for part in (ZPRLPolicy(config), *make_zprl_pre_post_processors(config, stats)):
        part.save_pretrained(fx.policy)
    fx.reach = generate_reach_dataset(3, tmp / "reach")
    report = generate_dataset("lift", 1, tmp / "lift", tier_fractions=(1, 0, 0), progress=False)
    fx.lift_hdf5 = Path(report["hdf5"])
    fx.online = tmp / "online"
    fx.online_config = tmp / "online.yaml"
    fx.online_config.write_text(ONLINE_CONFIG.format(root=fx.online, policy=fx.policy, steps=64))
    lightning_main(["fit", "-c", str(fx.online_config)])
    return fx


def copy_tree(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_dir():
            copy_tree(path, dest / path.name)
        else:
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


def damaged_copy(src: Path, dest: Path, how: str) -> Path:
    """A copy of ``src`` truncated to half, emptied, overwritten with random bytes, or with a damaged header."""
    data = src.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "garbage":
        data = np.random.default_rng(0).bytes(len(data))
    elif how == "header":
        data = data[:1000] + b"\xff" * 2000 + data[3000:]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def policy_variant(fx: Fixtures, name: str, edit: Callable[[Path], None]) -> Path:
    folder = copy_tree(fx.policy, fx.tmp / "policies" / name)
    edit(folder)
    return folder


def _drop_vib(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".vib." not in k}, folder / "model.safetensors")


def _add_weight(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "diffusion.vib.extra.weight": torch.zeros(2)}, folder / "model.safetensors")


def _rename_vib(folder: Path) -> None:  # what an export from a zprl with other VIB field names looks like
    weights = load_file(folder / "model.safetensors")
    save_file({k.replace(".vib.encoder.", ".vib.enc."): v for k, v in weights.items()}, folder / "model.safetensors")


def _damage(name: str, how: str) -> Callable[[Path], None]:
    return lambda folder: damaged_copy(folder / name, folder / name, how)


def _edit_json(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def cases(fx: Fixtures) -> list[Case]:
    from zprl.checkpointing import SafeModelCheckpoint
    from zprl.cli import lightning_main, zprl_main
    from zprl.data.datamodule import LeRobotDataModule, RobomimicDataModule
    from zprl.data.generate import generate_dataset
    from zprl.data.lerobot_source import load_lerobot_metadata
    from zprl.data.reach_demos import generate_reach_dataset
    from zprl.online.compare import run_comparison
    from zprl.online.replay_buffer import ReplayBuffer
    from zprl.policy_io import load_policy
    from zprl.tracking import prepare_tracking

    tmp = fx.tmp / "cases"
    tmp.mkdir()
    out = tmp / "generated"
    last = fx.online / "checkpoints" / "last.ckpt"
    result: list[Case] = []

    # -- zprl data generate ---------------------------------------------------------------------------
    def generate(*args: str) -> Callable[[], None]:
        return lambda: zprl_main(["data", "generate", "--out", str(out), *args])

    for task in ("reach", "lift"):
        for value in ("0", "-3", "two", "1.5"):
            result.append(Case("data generate", f"--task {task} --demos {value}", generate("--task", task, "--demos",
                                                                                            value), ("--demos",)))
    for args, mention in ((["--camera-size", "0"], "--camera-size"), (["--camera-size", "-8"], "--camera-size"),
                          (["--seed", "-1"], "--seed"), (["--bias", "0.1"], "--bias"),
                          (["--task", "stack", "--demos", "1"], "stack"),
                          (["--task", "pusht", "--demos", "1"], "lerobot/pusht")):
        result.append(Case("data generate", " ".join(args), generate(*args), (mention,)))
    blocker = tmp / "a_file"
    blocker.write_text("")
    result.append(Case("data generate", "--out under a file", lambda: generate_dataset("lift", 1, blocker / "x"),
                       ("Pass another --out",)))
    result.append(Case("data generate", "--out is a file", lambda: generate_reach_dataset(1, blocker),
                       (str(blocker), "is a file")))
    for task in ("lift", "reach"):
        foreign = tmp / f"foreign_{task}"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("keep me")
        (foreign / "demo.hdf5").write_text("mine")
        write = (lambda f=foreign: generate_dataset("lift", 1, f, overwrite=True)) if task == "lift" else \
            (lambda f=foreign: generate_reach_dataset(1, f, overwrite=True))
        result.append(Case("data generate", f"{task} --overwrite on a folder with foreign files", write,
                           ("notes.txt", "did not write"), check=lambda f=foreign: (f / "notes.txt").exists()))
        taken = tmp / f"taken_{task}"
        taken.mkdir()
        (taken / "x").write_text("")
        write = (lambda f=taken: generate_dataset("lift", 1, f)) if task == "lift" else \
            (lambda f=taken: generate_reach_dataset(1, f))
        result.append(Case("data generate", f"{task} into a non-empty folder without --overwrite", write,
                           ("--overwrite",)))
    for fractions in ((1, 1), (-1, 1, 1), (0, 0, 0)):
        result.append(Case("data generate", f"tier_fractions={fractions}",
                           lambda f=fractions: generate_dataset("lift", 2, out, tier_fractions=f), ("tier_fractions",)))

    # -- policy loading ---------------------------------------------------------------------------------
    variants = {
        "no VIB weights": (_drop_vib, ("missing keys", "diffusion.vib", "Re-export")),
        "an extra weight": (_add_weight, ("unexpected keys", "Re-export")),
        "renamed VIB weights (older zprl)": (_rename_vib, ("missing keys", "unexpected keys", "Re-export")),
        "truncated model.safetensors": (_damage("model.safetensors", "truncated"), ("model.safetensors",)),
        "empty model.safetensors": (_damage("model.safetensors", "empty"), ("model.safetensors",)),
        "garbage model.safetensors": (_damage("model.safetensors", "garbage"), ("model.safetensors",)),
        "truncated config.json": (_damage("config.json", "truncated"), ("config.json",)),
        "config.json of another policy type": (_edit_json("config.json", '{"type": "act"}'), ("config.json",)),
        "config.json with an unknown field": (
            lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace(
                '"type": "zprl",', '"type": "zprl", "vib_layers_from_the_future": 3,')), ("config.json",)),
        "truncated preprocessor json": (_damage("policy_preprocessor.json", "truncated"),
                                        ("policy_preprocessor.json",)),
        "missing postprocessor json": (lambda f: (f / "policy_postprocessor.json").unlink(),
                                       ("policy_postprocessor.json",)),
        "missing model.safetensors": (lambda f: (f / "model.safetensors").unlink(), ("model.safetensors",)),
    }
    for name, (edit, mentions) in variants.items():
        folder = policy_variant(fx, name.replace(" ", "_").replace("(", "").replace(")", ""), edit)
        result.append(Case("policy loading", f"policy folder with {name}", lambda f=folder: load_policy(f),
                           (*mentions, str(folder))))
    for how in ("truncated", "empty", "garbage"):
        path = damaged_copy(last, tmp / f"{how}.ckpt", how)
        result.append(Case("policy loading", f"{how} .ckpt as policy", lambda p=path: load_policy(p), (str(path),)))
    result.append(Case("policy loading", "online checkpoint as pretraining policy", lambda: load_policy(last),
                       ("online RL checkpoint", str(last))))
    plain = tmp / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    result.append(Case("policy loading", "a .ckpt without zprl entries", lambda: load_policy(plain),
                       ("not a zprl pretraining checkpoint", str(plain))))
    result.append(Case("policy loading", "missing policy path", lambda: load_policy(tmp / "nope"), ("nope",)))
    result.append(Case("policy loading", "policy path with a wrong suffix", lambda: load_policy(blocker),
                       (str(blocker),)))

    # -- zprl evaluate ----------------------------------------------------------------------------------
    def evaluate(*args: str) -> Callable[[], None]:
        return lambda: zprl_main(["evaluate", "--policy", str(fx.policy), "--device", "cpu", *args])

    for args, mention in ((["--episodes", "0"], "--episodes"), (["--num-envs", "0"], "--num-envs"),
                          (["--seed", "-5"], "--seed"), (["--task", "reach", "--num-envs", "1"], "Shape mismatch"),
                          (["--task", "nope"], "nope")):
        result.append(Case("evaluate", " ".join(args), evaluate(*args), (mention,)))

    # -- data modules -----------------------------------------------------------------------------------
    for name, value in (("n_obs_steps", 0), ("n_obs_steps", -1), ("horizon", 0), ("batch_size", 0),
                        ("num_workers", -1)):
        result.append(Case("data module", f"{name}={value}",
                           lambda n=name, v=value: RobomimicDataModule(**{n: v}), (f"data.init_args.{name}",)))
    result.append(Case("data module", "horizon < n_obs_steps", lambda: LeRobotDataModule(n_obs_steps=4, horizon=2),
                       ("data.init_args.horizon", "n_obs_steps")))
    for fraction in (1.0, -0.1):
        result.append(Case("data module", f"val_fraction={fraction}",
                           lambda f=fraction: RobomimicDataModule(hdf5_path=str(fx.lift_hdf5), val_fraction=f).setup(),
                           ("val_fraction",)))

    def robomimic(path: Path, **kwargs) -> Callable[[], None]:
        return lambda: RobomimicDataModule(hdf5_path=str(path), n_obs_steps=2, horizon=8, val_fraction=0.0,
                                           **kwargs).setup()

    for how in ("truncated", "empty", "garbage", "header"):
        path = damaged_copy(fx.lift_hdf5, tmp / f"{how}.hdf5", how)
        result.append(Case("data module", f"{how} robomimic HDF5", robomimic(path), (str(path),)))
    result.append(Case("data module", "missing HDF5", robomimic(tmp / "none.hdf5"), ("none.hdf5", "zprl data")))
    result.append(Case("data module", "unknown state key", robomimic(fx.lift_hdf5, state_keys=["robot0_no_such"]),
                       ("robot0_no_such", str(fx.lift_hdf5))))
    result.append(Case("data module", "unknown filter key", robomimic(fx.lift_hdf5, filter_key="experts"),
                       ("experts",)))

    def lerobot_root(name: str, layout: Callable[[Path], None]) -> Path:
        root = tmp / "roots" / name
        root.parent.mkdir(exist_ok=True)
        layout(root)
        return root

    roots = {
        "missing root": lambda r: None,
        "empty root": lambda r: r.mkdir(),
        "root is a file": lambda r: r.write_text(""),
        "root without meta/": lambda r: (r.mkdir(), os.symlink(fx.reach / "data", r / "data")),
        "root without data/": lambda r: (r.mkdir(), os.symlink(fx.reach / "meta", r / "meta")),
        "root one level too high": lambda r: (r.mkdir(), os.symlink(fx.reach, r / "lerobot")),
        "root with an empty data/": lambda r: (r.mkdir(), os.symlink(fx.reach / "meta", r / "meta"),
                                               (r / "data").mkdir()),
    }
    for name, layout in roots.items():
        root = lerobot_root(name.replace(" ", "_").replace("/", ""), layout)
        result.append(Case("data module", f"LeRobot {name}",
                           lambda r=root: load_lerobot_metadata("zprl/reach_biased", root=r), (str(root),)))

    def lerobot(**kwargs) -> Callable[[], None]:
        args = {"repo_id": "zprl/reach_biased", "root": str(fx.reach), "env_state_key": None, "task": "reach",
                "n_obs_steps": 2, "horizon": 8, "val_fraction": 0.0, **kwargs}
        return lambda: LeRobotDataModule(**args).setup()

    result.append(Case("data module", "unknown LeRobot state key", lerobot(state_key="observation.pos"),
                       ("observation.pos", "state_key")))
    result.append(Case("data module", "unknown quality tier", lerobot(quality_filter="best"), ("best",)))

    # -- MLflow -------------------------------------------------------------------------------------------
    result.append(Case("tracking", "unreachable server http://127.0.0.1:9",
                       lambda: prepare_tracking("http://127.0.0.1:9"), ("http://127.0.0.1:9", "unreachable")))
    result.append(Case("tracking", "unreachable server https://127.0.0.1:9",
                       lambda: prepare_tracking("https://127.0.0.1:9"), ("https://127.0.0.1:9",)))
    bad_store = tmp / "bad.db"
    bad_store.write_bytes(b"not a database" * 200)
    result.append(Case("tracking", "damaged sqlite store", lambda: prepare_tracking(f"sqlite:///{bad_store}"),
                       (str(bad_store),)))
    result.append(Case("tracking", "sqlite store under a file",
                       lambda: prepare_tracking(f"sqlite:///{blocker}/mlruns.db"), (str(blocker),)))
    result.append(Case("tracking", "fit with an unreachable server", lambda: lightning_main(
        ["fit", "-c", str(ROOT / "conf/pretrain_reach.yaml"), f"--trainer.default_root_dir={tmp / 'fit'}",
         "--trainer.logger.init_args.tracking_uri=http://127.0.0.1:9", f"--data.init_args.root={fx.reach}"]),
        ("http://127.0.0.1:9",)))

    # -- zprl compare ----------------------------------------------------------------------------------------
    methods = [str(ROOT / "conf/methods/zprl.yaml")]
    result.append(Case("compare", "--jobs 0", lambda: zprl_main(["compare", *methods, "--jobs", "0"]), ("--jobs",)))
    result.append(Case("compare", "--seeds -1", lambda: zprl_main(["compare", *methods, "--seeds", "-1"]),
                       ("--seeds",)))
    result.append(Case("compare", "missing method overlay", lambda: run_comparison([str(tmp / "nope.yaml")]),
                       ("nope.yaml",)))
    result.append(Case("compare", "two overlays with one method name", lambda: run_comparison(methods * 2),
                       ("method name",)))

    # -- online module, checkpoints, resume -------------------------------------------------------------
    def online(*overrides: str) -> Callable[[], None]:
        return lambda: lightning_main(["fit", "-c", str(fx.online_config), f"--trainer.default_root_dir={tmp / 'o'}",
                                       f"--trainer.callbacks.init_args.dirpath={tmp / 'o' / 'checkpoints'}",
                                       *overrides])

    for name, value, mention in (("total_env_steps", 0, "total_env_steps"), ("eval_episodes", 0, "eval_episodes"),
                                 ("num_envs", 0, "num_envs"), ("utd_ratio", -1.0, "utd_ratio"),
                                 ("action_schedule_fraction", 2.0, "action_schedule_fraction"),
                                 ("steering", "bogus", "steering"), ("buffer_capacity", 0, "buffer_capacity"),
                                 ("policy_path", tmp / "nope", "nope"), ("policy_path", last, "online RL checkpoint")):
        result.append(Case("online", f"{name}={value}", online(f"--model.init_args.{name}={value}"), (mention,)))
    result.append(Case("online", "replay buffer capacity 0", lambda: ReplayBuffer(0, 2, 2), ("capacity",)))
    result.append(Case("online", "SafeModelCheckpoint every_n_iterations=-1",
                       lambda: SafeModelCheckpoint(dirpath=tmp, every_n_iterations=-1), ("every_n_iterations",)))

    def resume(ckpt: Path, *overrides: str) -> Callable[[], None]:
        return lambda: lightning_main(["fit", "-c", str(fx.online_config), f"--trainer.default_root_dir={tmp / 'r'}",
                                       f"--trainer.callbacks.init_args.dirpath={tmp / 'r' / 'checkpoints'}",
                                       f"--ckpt_path={ckpt}", *overrides])

    result.append(Case("resume", "changed steering_scale", resume(last, "--model.init_args.steering_scale=3.0"),
                       ("steering_scale",)))
    result.append(Case("resume", "changed method (action residual overlay)",
                       resume(last, "-c", str(ROOT / "conf/methods/action_residual.yaml")), ("steering",)))
    result.append(Case("resume", "changed SAC width", resume(last, "--model.init_args.sac.hidden_dims=[64, 64]"),
                       ("sac.hidden_dims",)))
    result.append(Case("resume", "missing --ckpt_path file", resume(tmp / "missing.ckpt"), ("missing.ckpt",)))
    lone = tmp / "lone" / "last.ckpt"
    damaged_copy(last, lone, "truncated")
    result.append(Case("resume", "truncated last.ckpt, no previous one", resume(lone), (str(lone), "truncated")))
    return result


def run_case(case: Case) -> tuple[str, str]:
    """('clear' | 'unclear' | 'silent', message) for one bad input."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            case.run()
    except SystemExit as err:  # argparse / LightningCLI: the message is on stderr or in the exit code
        message = stderr.getvalue() + ("" if isinstance(err.code, int | None) else str(err.code))
    except Exception as err:  # noqa: BLE001 -- any error is a verdict here
        message = f"{type(err).__name__}: {err}"
    else:
        return "silent", "no error"
    clear = all(word in message for word in case.mentions) and (case.check is None or case.check())
    return ("clear" if clear else "unclear"), " ".join(message.split())[-300:]


# -- faults ---------------------------------------------------------------------------------------------------

# A child of a backgrounded shell inherits an ignored SIGINT; Python's own handler makes Ctrl-C a KeyboardInterrupt.
CHILD_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD_SIGINT + code, *args], env=CHILD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def killed_generation(tmp: Path, sig: signal.Signals) -> bool:
    """Kill a data generation while it writes: no dataset may appear at --out, and a rerun must succeed."""
    from zprl.data.lerobot_source import load_lerobot_metadata
    from zprl.data.reach_demos import generate_reach_dataset

    out = tmp / f"killed_{sig.name}" / "reach"
    out.parent.mkdir(parents=True)
    proc = _spawn("from zprl.cli import zprl_main; zprl_main()", "data", "generate", "--task", "reach", "--demos",
                  "5000", "--out", str(out))
    started = _wait_for(lambda: any(out.parent.glob(".reach.partial-*/data")), proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if not started or out.exists():
        return False
    generate_reach_dataset(2, out)
    return load_lerobot_metadata("zprl/reach_biased", root=out).total_episodes == 2 and \
        sorted(p.name for p in out.parent.iterdir()) == ["reach"]


def killed_online_run(fx: Fixtures, sig: signal.Signals) -> bool:
    """Kill an online run after its first checkpoints: a whole checkpoint must remain and resume must work."""
    from zprl.checkpointing import checkpoint_problem, resolve_resume_checkpoint
    from zprl.cli import lightning_main

    config = killed_run_config(fx)
    proc = _spawn("from zprl.cli import lightning_main; lightning_main()", "fit", "-c", str(config))
    last = fx.tmp / "online_killed" / "checkpoints" / "last.ckpt"
    started = _wait_for(lambda: previous_path_exists(last), proc, timeout=600)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if not started:
        return False
    resumable = resolve_resume_checkpoint(last)
    if checkpoint_problem(resumable) is not None:
        return False
    lightning_main(["fit", "-c", str(config), f"--ckpt_path={last}", "--model.init_args.total_env_steps=192"])
    return _env_steps(last) >= 192


def killed_run_config(fx: Fixtures) -> Path:
    config = fx.tmp / "online_killed.yaml"
    config.write_text(ONLINE_CONFIG.format(root=fx.tmp / "online_killed", policy=fx.policy, steps=100_000))
    return config


def _env_steps(checkpoint: Path) -> int:
    from zprl.online.module import ONLINE_CHECKPOINT_KEY

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)[ONLINE_CHECKPOINT_KEY]
    return state["collector"]["env_steps"]


def previous_path_exists(last: Path) -> bool:
    from zprl.checkpointing import previous_path

    return previous_path(last).exists()


def truncated_last_checkpoint(fx: Fixtures) -> bool:
    """A truncated last.ckpt (the killed run's): resume must fall back to last.prev.ckpt and finish the run."""
    from zprl.checkpointing import checkpoint_problem
    from zprl.cli import lightning_main

    last = fx.tmp / "online_killed" / "checkpoints" / "last.ckpt"
    damaged_copy(last, last, "truncated")
    lightning_main(["fit", "-c", str(killed_run_config(fx)), f"--ckpt_path={last}",
                    "--model.init_args.total_env_steps=256"])
    return checkpoint_problem(last) is None and _env_steps(last) >= 256


def raised_budget_on_resume(fx: Fixtures) -> bool:
    """Resuming with a larger total_env_steps must train on (Lightning's CLI restored the old budget and exited)."""
    from zprl.cli import lightning_main

    root = fx.tmp / "raised"
    lightning_main(["fit", "-c", str(fx.online_config), f"--trainer.default_root_dir={root}",
                    f"--trainer.callbacks.init_args.dirpath={root / 'checkpoints'}",
                    f"--ckpt_path={fx.online / 'checkpoints' / 'last.ckpt'}", "--model.init_args.total_env_steps=128"])
    return _env_steps(root / "checkpoints" / "last.ckpt") >= 128


def concurrent_store(tmp: Path) -> bool:
    """Three processes open a fresh MLflow sqlite store at once (as `zprl compare --jobs 3` children do)."""
    script = textwrap.dedent("""
        import sys
        from mlflow.tracking import MlflowClient
        from zprl.tracking import prepare_tracking
        client = MlflowClient(prepare_tracking(sys.argv[1]))
        run = client.create_run(client.create_experiment("probe-" + sys.argv[2]))
        client.log_metric(run.info.run_id, "x", 1.0)
    """)
    uri = f"sqlite:///{tmp / 'concurrent' / 'mlruns.db'}"
    procs = [_spawn(script, uri, str(i)) for i in range(3)]
    return all(proc.wait(timeout=600) == 0 for proc in procs)


def checkpoint_size(tmp: Path) -> bool:
    """258 transitions in a 3M-slot replay buffer must not checkpoint the whole preallocated storage."""
    from zprl.online.replay_buffer import ReplayBuffer, Transitions

    buffer = ReplayBuffer(3_000_000, obs_dim=4, action_dim=2)
    n = 258
    buffer.add(Transitions(torch.zeros(n, 4), torch.zeros(n, 2), torch.zeros(n), torch.zeros(n, 4), torch.zeros(n),
                           torch.ones(n)))
    torch.save(buffer.state_dict(), tmp / "buffer.pt")
    return (tmp / "buffer.pt").stat().st_size < 1_000_000


def faults(fx: Fixtures) -> list[Fault]:
    return [
        Fault("kill -9 of a data generation", lambda: killed_generation(fx.tmp, signal.SIGKILL)),
        Fault("Ctrl-C of a data generation", lambda: killed_generation(fx.tmp, signal.SIGINT)),
        Fault("kill -9 of an online run, then resume", lambda: killed_online_run(fx, signal.SIGKILL)),
        Fault("truncated last.ckpt (of the killed run), then resume", lambda: truncated_last_checkpoint(fx)),
        Fault("resume with a raised total_env_steps", lambda: raised_budget_on_resume(fx)),
        Fault("3 runs open a fresh MLflow sqlite store at once", lambda: concurrent_store(fx.tmp)),
        Fault("replay buffer checkpoint of 258 transitions in 3M slots < 1 MB", lambda: checkpoint_size(fx.tmp)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case and its message")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the cases' own warnings would drown the table
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zprl-fault-probe-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fx = build_fixtures(Path(tmp))
        verdicts: Counter = Counter()
        by_category: dict[str, Counter] = {}
        for case in cases(fx):
            verdict, message = run_case(case)
            verdicts[verdict] += 1
            by_category.setdefault(case.category, Counter())[verdict] += 1
            if args.verbose or verdict != "clear":
                print(f"[{verdict:7}] {case.category}: {case.name} -> {message}")
        survived = []
        for fault in faults(fx):
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    ok = fault.run()
            except Exception as err:  # noqa: BLE001 -- a fault that ends in an error lost the run
                ok = False
                print(f"[fault  ] {fault.name}: {type(err).__name__}: {err}")
            survived.append(ok)
            if args.verbose or not ok:
                print(f"[{'survived' if ok else 'LOST':7}] {fault.name}")
    tried = sum(verdicts.values())
    print(f"\nbad inputs tried: {tried}  clear errors: {verdicts['clear']}  unclear: {verdicts['unclear']}  "
          f"silent wrong: {verdicts['silent']}")
    for category, counts in by_category.items():
        print(f"  {category:15} tried {sum(counts.values()):3}  clear {counts['clear']:3}  unclear "
              f"{counts['unclear']:3}  silent {counts['silent']:3}")
    print(f"faults survived: {sum(survived)} of {len(survived)}")
    print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
