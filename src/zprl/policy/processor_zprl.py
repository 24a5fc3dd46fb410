"""Pre/post processors of the ZPRL policy: LeRobot's diffusion pipelines (normalisation, batching, device)."""

from typing import Any

from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
from lerobot.processor import PolicyAction, PolicyProcessorPipeline

from .configuration_zprl import ZPRLConfig


def make_zprl_pre_post_processors(
    config: ZPRLConfig,
    dataset_stats: dict[str, dict[str, Any]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """(preprocessor, postprocessor) as for LeRobot's diffusion policy.

    The preprocessor adds a batch dim to unbatched observations, moves tensors to `config.device` and
    normalises inputs and `action` with `dataset_stats` (features without stats pass through unchanged);
    the postprocessor unnormalises actions and moves them to the CPU. Both save and load with the policy
    folder (`save_pretrained`, or lerobot's `make_pre_post_processors(config, pretrained_path=...)`).
    """
    return make_diffusion_pre_post_processors(config, dataset_stats=dataset_stats)
