"""Load a pretrained ZPRL policy with its processors from a LeRobot-format folder or a Lightning checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import draccus
import torch
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
REEXPORT_HINT = ("Re-export the policy with the current zprl (`PretrainModule.export_policy`, or rerun "
                 "`lightning fit -c conf/pretrain.yaml`), or load it with the zprl version that wrote it.")
logger = logging.getLogger(__name__)


class PolicyLoadError(RuntimeError):
    """A policy folder or checkpoint that cannot be loaded as it is; the message names the file and the fix."""


def check_state_dict_keys(source: Path, missing: list[str], unexpected: list[str]) -> None:
    """Raise :class:`PolicyLoadError` listing the weights ``source`` lacks or has beyond the model's."""
    if not (missing or unexpected):
        return
    lines = [f"The weights in {source} do not match the policy its config describes:"]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(sorted(keys)[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "")
            lines.append(f"  {label} keys: {shown}")
    lines.append("A policy without some of its weights (e.g. the VIB bottleneck) would run with random ones. "
                 "It was probably exported by another zprl version (its VIB architecture fields differ). "
                 + REEXPORT_HINT + " Pass strict=False to load it anyway.")
    raise PolicyLoadError("\n".join(lines))


def _load_folder_weights(policy, path: Path, strict: bool) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    weights = path / "model.safetensors"
    try:
        missing, unexpected = load_model(policy, weights, strict=False, device="cpu")
    except (SafetensorError, OSError) as err:
        raise PolicyLoadError(f"{weights} is not a readable safetensors file ({err}); it is truncated or corrupt "
                              f"(an interrupted copy or export?). {REEXPORT_HINT}") from err
    if strict:
        check_state_dict_keys(weights, list(missing), list(unexpected))
    elif missing or unexpected:
        logger.warning("Loading %s with missing keys %s and unexpected keys %s (strict=False).",
                        weights, sorted(missing), sorted(unexpected))


def _load_folder(path: Path, device: str, strict: bool):
    from zprl.policy import ZPRLConfig, ZPRLPolicy

    missing = [f for f in ("config.json", "model.safetensors", PREPROCESSOR_FILE, POSTPROCESSOR_FILE)
               if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete zprl policy export: missing {missing}. Export with "
                                f"PretrainModule.export_policy (saves the policy and both processors).")
    try:
        config = ZPRLConfig.from_pretrained(path)
    except Exception as err:  # json, draccus and registry errors all mean the same thing here
        raise PolicyLoadError(f"{path / 'config.json'} is not a valid zprl policy config ({type(err).__name__}: "
                              f"{err}). {REEXPORT_HINT}") from err
    if not isinstance(config, ZPRLConfig):
        raise PolicyLoadError(f"{path / 'config.json'} describes a {config.type!r} policy, not a zprl one. Load it "
                              "with LeRobot's own policy class, or point at a zprl policy export.")
    config.device = device
    policy = ZPRLPolicy(config)
    _load_folder_weights(policy, path, strict)
    processors = []
    for name, kwargs in ((PREPROCESSOR_FILE, {"overrides": {"device_processor": {"device": device}}}),
                         (POSTPROCESSOR_FILE, {"to_transition": policy_action_to_transition,
                                               "to_output": transition_to_policy_action})):
        try:
            processors.append(PolicyProcessorPipeline.from_pretrained(path, config_filename=name, **kwargs))
        except Exception as err:  # broken json, a missing stats file, an unknown processor step
            raise PolicyLoadError(f"Cannot load the processor {path / name} ({type(err).__name__}: {err}). "
                                  f"{REEXPORT_HINT}") from err
    return policy, *processors


def _load_checkpoint(path: Path, device: str, strict: bool):
    from zprl.online.module import ONLINE_CHECKPOINT_KEY
    from zprl.policy import ZPRLConfig, ZPRLPolicy, make_zprl_pre_post_processors
    from zprl.pretrain import PRETRAIN_CHECKPOINT_KEY

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a non-checkpoint file
        raise PolicyLoadError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); it is truncated "
                              "or corrupt. Use the previous checkpoint beside it (last.prev.ckpt) or the exported "
                              "policy folder (outputs/pretrain/<run>/policy).") from err
    if ONLINE_CHECKPOINT_KEY in checkpoint:
        policy_path = checkpoint.get("hyper_parameters", {}).get("policy_path")
        raise PolicyLoadError(f"{path} is an online RL checkpoint (OnlineRLModule: SAC actor, critics, replay buffer), "
                              "not a pretraining checkpoint. Resume it with `lightning fit -c conf/zprl_online.yaml "
                              f"--ckpt_path={path}`; the frozen policy it steers is {policy_path}.")
    if PRETRAIN_CHECKPOINT_KEY not in checkpoint:
        raise PolicyLoadError(f"{path} is not a zprl pretraining checkpoint (no {PRETRAIN_CHECKPOINT_KEY!r} "
                              "entry). Pass a checkpoint of `lightning fit -c conf/pretrain.yaml` or an exported "
                              "policy folder.")
    saved = checkpoint[PRETRAIN_CHECKPOINT_KEY]
    try:
        config = draccus.decode(ZPRLConfig, json.loads(saved["policy_config"]))
    except Exception as err:  # fields of another zprl version's ZPRLConfig
        raise PolicyLoadError(f"The policy config stored in {path} does not fit this zprl's ZPRLConfig "
                              f"({type(err).__name__}: {err}). {REEXPORT_HINT}") from err
    config.device = device
    policy = ZPRLPolicy(config)
    prefix = "policy."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if strict:
        check_state_dict_keys(path, missing, unexpected)
    preprocessor, postprocessor = make_zprl_pre_post_processors(config, dataset_stats=saved["dataset_stats"])
    return policy, preprocessor, postprocessor


def load_policy(path: str | Path, device: str | torch.device = "cpu", strict: bool = True):
    """(policy, preprocessor, postprocessor) from ``path``, frozen in eval mode on ``device``.

    ``path`` is either a LeRobot-format folder written by ``PretrainModule.export_policy`` /
    ``save_pretrained`` (config.json, model.safetensors, policy_*processor.json) or a ``.ckpt``
    written by ``lightning fit -c conf/pretrain.yaml``. With ``strict`` (the default) weights missing
    from the file or not in the model raise :class:`PolicyLoadError` naming them; LeRobot's own
    ``from_pretrained`` only logs a warning and leaves such weights random.
    """
    path = Path(path)
    device = str(device)
    if not path.exists():
        raise FileNotFoundError(
            f"No pretrained policy at {path}. Pretrain one with `lightning fit -c conf/pretrain.yaml` (it exports "
            f"to outputs/pretrain/<run>/policy), or point `policy_path` at an existing LeRobot-format folder.")
    if path.is_dir():
        policy, preprocessor, postprocessor = _load_folder(path, device, strict)
    elif path.suffix == ".ckpt":
        policy, preprocessor, postprocessor = _load_checkpoint(path, device, strict)
    else:
        raise ValueError(f"Cannot load a policy from {path}: expected a LeRobot-format folder or a .ckpt file.")
    policy.to(device).eval()
    policy.requires_grad_(False)
    return policy, preprocessor, postprocessor


def env_kwargs_for(config) -> dict:
    """``make_env`` / ``make_vector_env`` settings a policy config needs: the cameras it expects
    (``observation.images.<cam>``) and their square size (84, the envs' default, without cameras)."""
    from zprl.data.schema import IMAGE_PREFIX

    cameras = tuple(key.removeprefix(IMAGE_PREFIX) for key in config.image_features)
    size = next(iter(config.image_features.values())).shape[-1] if cameras else 84
    return {"camera_names": cameras, "camera_size": size}


def check_policy_matches_env(config, observation_space, action_space) -> None:
    """Raise a clear error when a policy's input/action shapes do not fit an env (wrong task or cameras)."""
    from zprl.data.schema import IMAGE_PREFIX

    for key, feature in config.input_features.items():
        if key not in observation_space.spaces:
            raise ValueError(f"The policy expects observation {key!r}, which the env does not provide (it has "
                             f"{sorted(observation_space.spaces)}). Use the task / cameras the policy was trained on.")
        env_shape = observation_space[key].shape
        if key.startswith(IMAGE_PREFIX):
            env_shape = (env_shape[-1], *env_shape[:-1])  # env images are HxWx3, policy features 3xHxW
        if tuple(env_shape) != tuple(feature.shape):
            raise ValueError(f"Shape mismatch for {key!r}: policy {tuple(feature.shape)} vs env {tuple(env_shape)}. "
                             "The policy was trained on another task or camera size.")
    if tuple(action_space.shape[-1:]) != tuple(config.action_feature.shape):
        raise ValueError(f"Action size mismatch: policy {config.action_feature.shape[0]} vs env "
                         f"{action_space.shape[-1]}. Use the task the policy was trained on.")
