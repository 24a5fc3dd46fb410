"""Load a pretrained ZPRL policy with its processors from a LeRobot-format folder or a Lightning checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import draccus
import torch
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"


def load_policy(path: str | Path, device: str | torch.device = "cpu"):
    """(policy, preprocessor, postprocessor) from ``path``, frozen in eval mode on ``device``.

    ``path`` is either a LeRobot-format folder written by ``PretrainModule.export_policy`` /
    ``save_pretrained`` (config.json, model.safetensors, policy_*processor.json) or a ``.ckpt``
    written by ``lightning fit -c conf/pretrain.yaml``.
    """
    from zprl.policy import ZPRLConfig, ZPRLPolicy, make_zprl_pre_post_processors

    path = Path(path)
    device = str(device)
    if not path.exists():
        raise FileNotFoundError(
            f"No pretrained policy at {path}. Pretrain one with `lightning fit -c conf/pretrain.yaml` (it exports "
            f"to outputs/pretrain/<run>/policy), or point `policy_path` at an existing LeRobot-format folder.")
    if path.is_dir():
        missing = [f for f in ("config.json", "model.safetensors", PREPROCESSOR_FILE, POSTPROCESSOR_FILE)
                   if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"{path} is not a complete zprl policy export: missing {missing}. Export with "
                                    f"PretrainModule.export_policy (saves the policy and both processors).")
        policy = ZPRLPolicy.from_pretrained(path)
        policy.config.device = device
        preprocessor = PolicyProcessorPipeline.from_pretrained(
            path, config_filename=PREPROCESSOR_FILE, overrides={"device_processor": {"device": device}})
        postprocessor = PolicyProcessorPipeline.from_pretrained(
            path, config_filename=POSTPROCESSOR_FILE, to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action)
    elif path.suffix == ".ckpt":
        from zprl.pretrain import CHECKPOINT_KEY

        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if CHECKPOINT_KEY not in checkpoint:
            raise KeyError(f"{path} is not a zprl pretraining checkpoint (no {CHECKPOINT_KEY!r} entry).")
        saved = checkpoint[CHECKPOINT_KEY]
        config = draccus.decode(ZPRLConfig, json.loads(saved["policy_config"]))
        config.device = device
        policy = ZPRLPolicy(config)
        prefix = "policy."
        policy.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
        preprocessor, postprocessor = make_zprl_pre_post_processors(config, dataset_stats=saved["dataset_stats"])
    else:
        raise ValueError(f"Cannot load a policy from {path}: expected a LeRobot-format folder or a .ckpt file.")
    policy.to(device).eval()
    policy.requires_grad_(False)
    return policy, preprocessor, postprocessor


def policy_cameras(config) -> tuple[tuple[str, ...], int]:
    """The env cameras a policy config expects (``observation.images.<cam>``) and their square size."""
    from zprl.data.schema import IMAGE_PREFIX

    cameras = tuple(key.removeprefix(IMAGE_PREFIX) for key in config.image_features)
    size = next(iter(config.image_features.values())).shape[-1] if cameras else 84
    return cameras, size


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
