"""Configuration of the ZPRL policy: LeRobot's diffusion policy plus a variational information bottleneck."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from .vib import ACTIVATIONS, KL_REDUCTIONS

HEADS = ("diffusion", "flow")
VIB_TRAINING = ("decoupled", "joint", "posthoc")
CONDITIONINGS = ("latent", "raw")


@PreTrainedConfig.register_subclass("zprl")
@dataclass
class ZPRLConfig(DiffusionConfig):
    """`DiffusionConfig` plus the bottleneck, the action head and an optional timm vision backbone.

    Every `DiffusionConfig` field keeps its meaning (the noise-scheduler fields only matter for the
    diffusion head). The defaults differ from LeRobot's where LeRobot's would download weights or be
    slow on a CPU, and the environment state is min-max normalised like the robot state: no pretrained
    torchvision weights (GroupNorm instead of BatchNorm), a smaller UNet,
    horizon 16 and DDIM sampling with 10 steps (deterministic given the initial noise).

    Args:
        head: action generator, "diffusion" (DDPM training, `noise_scheduler_type` sampling) or "flow"
            (rectified flow: velocity prediction, `flow_num_steps` Euler steps from noise).
        bottleneck: insert the VIB between the observation encoder and the UNet conditioning.
            False is the no-bottleneck ablation: the exact identity path (mu = e, sigma = 0, KL = 0).
        vib_training: how the VIB is trained (docs/REFERENCE_MAP.md).
            "decoupled" (the authors'): the observation encoder and the generator train on the raw
            embedding e with the stock loss; the VIB trains through a detached copy of the generator on
            decode(z), z drawn from the detached e, plus beta * KL and `vib_recon_weight` * MSE(decode(z), e).
            "joint": the generator only ever sees decode(z) (zprl before 2026-11-28).
            "posthoc": only the VIB trains; encoder and generator are frozen (a plug-in on a trained policy).
        inference_conditioning: what conditions the generator at inference: "latent" (decode(mu), the
            authors') or "raw" (the embedding e, i.e. the policy without its bottleneck; needs a generator
            trained on e, so not with `vib_training="joint"`).
        z_dim: dimension of the bottleneck latent z.
        vib_hidden_dim / vib_num_layers / vib_activation: VIB encoder and decoder MLPs (authors: 3 x 256 GELU).
        beta: weight of KL(q(z|e) || N(0, I)) in the loss (authors: 2e-4 at z_dim 16 with the mean reduction).
        kl_reduction: "mean" averages the KL over the z dimensions as the authors do (per-dimension weight
            beta / z_dim); "sum" sums it (nats per sample, zprl before 2026-11-28).
        vib_recon_weight: weight of MSE(decode(z), e) (decoupled and posthoc training; authors 0.01).
        latent_generator_weight: decoupled training only: weight of a second imitation loss of the generator,
            conditioned on decode(z) with the VIB detached, so the generator also learns to act from the
            conditioning the latent path gives it, not only from exact embeddings (beyond the authors; 0 keeps
            their recipe, where the generator sees e only; benchmarks/RESULTS.md on the VIB's cost).
        beta_warmup_steps: the KL weight grows linearly from 0 to `beta` over this many training
            forward passes (0: constant `beta`, the authors').
        flow_num_steps: Euler steps of the flow head at inference (authors: 2 on robomimic).
        vision_backbone_timm: name of a timm CNN (e.g. "resnet18", "resnet10t") used instead of the
            torchvision `vision_backbone`; BatchNorm is replaced by GroupNorm when `use_group_norm`.
        pretrained_backbone: load timm's pretrained weights (downloads; only with `vision_backbone_timm`).
    """

    # LeRobot fields with CPU-friendly, offline defaults.
    horizon: int = 16
    n_action_steps: int = 8
    pretrained_backbone_weights: str | None = None
    use_group_norm: bool = True
    down_dims: tuple[int, ...] = (128, 256, 512)
    noise_scheduler_type: str = "DDIM"
    num_inference_steps: int | None = 10
    # LeRobot's diffusion mapping has no "ENV" entry, which leaves `observation.environment_state`
    # (object poses, keypoints in pixels) unnormalised; zprl scales it like the robot state.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MIN_MAX,
            "ENV": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )

    # ZPRL fields.
    head: str = "diffusion"
    bottleneck: bool = True
    vib_training: str = "decoupled"
    inference_conditioning: str = "latent"
    z_dim: int = 16
    vib_hidden_dim: int = 256
    vib_num_layers: int = 3
    vib_activation: str = "gelu"
    beta: float = 2e-4
    kl_reduction: str = "mean"
    vib_recon_weight: float = 0.01
    latent_generator_weight: float = 0.0
    beta_warmup_steps: int = 0
    flow_num_steps: int = 2
    vision_backbone_timm: str | None = None
    pretrained_backbone: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"`head` must be one of {HEADS}. Got {self.head!r}.")
        choices = {"vib_training": VIB_TRAINING, "inference_conditioning": CONDITIONINGS,
                   "kl_reduction": KL_REDUCTIONS, "vib_activation": tuple(ACTIVATIONS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}. Got {getattr(self, name)!r}.")
        if self.vib_training == "joint" and self.inference_conditioning == "raw" and self.bottleneck:
            raise ValueError(
                "`inference_conditioning='raw'` needs a generator trained on the raw embedding; with "
                "`vib_training='joint'` it only saw decode(z). Use 'latent', or train with 'decoupled'."
            )
        if self.vib_recon_weight < 0:
            raise ValueError(f"`vib_recon_weight` must be >= 0. Got {self.vib_recon_weight}.")
        if self.latent_generator_weight < 0 or (self.latent_generator_weight > 0 and self.vib_training != "decoupled"):
            raise ValueError("`latent_generator_weight` must be >= 0, and > 0 only with `vib_training='decoupled'` "
                             f"(joint trains the generator on decode(z) anyway). Got {self.latent_generator_weight} "
                             f"with {self.vib_training!r}.")
        for name in ("z_dim", "vib_hidden_dim", "vib_num_layers", "flow_num_steps", "n_obs_steps", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1. Got {getattr(self, name)}.")
        if self.beta < 0:
            raise ValueError(f"`beta` must be >= 0. Got {self.beta}.")
        if self.beta_warmup_steps < 0:
            raise ValueError(f"`beta_warmup_steps` must be >= 0. Got {self.beta_warmup_steps}.")
        max_action_steps = self.horizon - self.n_obs_steps + 1
        if not 1 <= self.n_action_steps <= max_action_steps:
            raise ValueError(
                f"`n_action_steps` must be in [1, horizon - n_obs_steps + 1] = [1, {max_action_steps}]. "
                f"Got {self.n_action_steps}; lower it or raise `horizon`."
            )
        if self.vision_backbone_timm is not None:
            import timm

            if not timm.is_model(self.vision_backbone_timm):
                raise ValueError(
                    f"`vision_backbone_timm` {self.vision_backbone_timm!r} is not a timm model; "
                    "see `timm.list_models()` (e.g. 'resnet18', 'resnet10t')."
                )
            if self.pretrained_backbone_weights is not None:
                raise ValueError(
                    "`pretrained_backbone_weights` is for the torchvision backbone; with "
                    "`vision_backbone_timm` set it to None and use `pretrained_backbone` instead."
                )
            if self.pretrained_backbone and self.use_group_norm:
                raise ValueError(
                    "Replacing BatchNorm by GroupNorm ruins pretrained weights: set `use_group_norm=False` "
                    "or `pretrained_backbone=False`."
                )
        elif self.pretrained_backbone:
            raise ValueError(
                "`pretrained_backbone` only applies to `vision_backbone_timm`; for the torchvision "
                "backbone set `pretrained_backbone_weights`."
            )

    def validate_features(self) -> None:
        if self.robot_state_feature is None:
            raise ValueError(
                f"ZPRL needs a `{OBS_STATE}` STATE input feature; build the config with `zprl_config_for`."
            )
        if self.action_feature is None:
            raise ValueError(
                f"ZPRL needs an `{ACTION}` ACTION output feature; build the config with `zprl_config_for`."
            )
        super().validate_features()

    @property
    def cond_dim(self) -> int:
        """Dimension of the observation embedding e (LeRobot's flattened global conditioning)."""
        per_step = self.robot_state_feature.shape[0]
        per_step += 2 * self.spatial_softmax_num_keypoints * len(self.image_features)
        if self.env_state_feature is not None:
            per_step += self.env_state_feature.shape[0]
        return per_step * self.n_obs_steps


def zprl_config_for(
    state_dim: int,
    env_state_dim: int,
    action_dim: int,
    camera_names: Sequence[str] = (),
    image_shape: tuple[int, int, int] = (3, 84, 84),
    **overrides,
) -> ZPRLConfig:
    """A `ZPRLConfig` whose input/output features match the batch schema of docs/INTERFACES.md.

    `env_state_dim=0` leaves out `observation.environment_state` (then at least one camera is needed);
    each camera becomes an `observation.images.<camera>` VISUAL feature of shape `image_shape`.
    `overrides` are any other `ZPRLConfig` fields.
    """
    if state_dim < 1 or action_dim < 1 or env_state_dim < 0:
        raise ValueError(
            f"Need state_dim >= 1, action_dim >= 1 and env_state_dim >= 0; got {state_dim=}, "
            f"{action_dim=}, {env_state_dim=}."
        )
    input_features = {OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))}
    if env_state_dim:
        input_features[OBS_ENV_STATE] = PolicyFeature(type=FeatureType.ENV, shape=(env_state_dim,))
    for camera in camera_names:
        input_features[f"{OBS_IMAGES}.{camera}"] = PolicyFeature(
            type=FeatureType.VISUAL, shape=tuple(image_shape)
        )
    output_features = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    config = ZPRLConfig(input_features=input_features, output_features=output_features, **overrides)
    config.validate_features()
    return config


# Fields a dataset, the runtime or the hub upload decides, so a training run does not set them.
DATA_DECIDED_FIELDS = frozenset({
    "input_features", "output_features", "n_obs_steps", "horizon", "normalization_mapping", "device",
    "pretrained_path", "pretrained_revision", "push_to_hub", "repo_id", "private", "tags", "license", "use_peft",
})
# The VIB's shape (fixed by a trained VIB's weights) and its loss (free to change when a VIB is refined).
VIB_ARCHITECTURE_FIELDS = ("bottleneck", "z_dim", "vib_hidden_dim", "vib_num_layers", "vib_activation")
VIB_LOSS_FIELDS = ("beta", "kl_reduction", "vib_recon_weight", "beta_warmup_steps", "inference_conditioning")
TRAINING_FIELDS = ("optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "scheduler_name",
                   "scheduler_warmup_steps")


def _settings_fields() -> list[tuple[str, Any, Any]]:
    hints = get_type_hints(ZPRLConfig)
    hints["optimizer_betas"] = tuple[float, float]  # LeRobot annotates a bare `tuple`
    fields = []
    for spec in dataclasses.fields(ZPRLConfig):
        if not spec.init or spec.name in DATA_DECIDED_FIELDS:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        fields.append((spec.name, hints[spec.name], dataclasses.field(default=default)))
    return fields


ZPRLSettings = dataclasses.make_dataclass("ZPRLSettings", _settings_fields(), module=__name__)
ZPRLSettings.__doc__ = """The `ZPRLConfig` fields a training run sets, with `ZPRLConfig`'s defaults (see its `Args`).

Generated from `ZPRLConfig`, so the two never disagree; the fields the dataset decides (features, `n_obs_steps`,
`horizon`, normalisation) and the hub-upload fields are left out. `PretrainModule(policy=...)` takes one, so a
config's `model.init_args.policy:` mapping is the one place for every policy and optimiser value, and the
exported `config.json` records exactly what trained.
"""
