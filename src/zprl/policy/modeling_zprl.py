"""ZPRL policy: LeRobot's diffusion policy with a VIB on its global conditioning and a diffusion or flow head.

Pipeline: observations -> e (LeRobot's `_prepare_global_conditioning`) -> q(z|e) = N(mu, sigma^2)
-> decode(mu) -> FiLM conditioning of the 1D UNet. How the VIB trains (`vib_training`): "decoupled" (the
authors': the UNet trains on e, the VIB through a detached UNet), "joint" or "posthoc" (VIB only).
The online RL interface (`encode_latent`, `decode_latent`, `sample_noise`, `generate`) exposes each stage.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from lerobot.policies.diffusion.modeling_diffusion import (
    DiffusionModel,
    DiffusionPolicy,
    DiffusionRgbEncoder,
    SpatialSoftmax,
    _replace_submodules,
)
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.utils import get_device_from_parameters, get_dtype_from_parameters, get_output_shape
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE
from torch import Tensor, nn
from torch.func import functional_call

from zprl.data.schema import ACTION_IS_PAD

from .configuration_zprl import ZPRLConfig
from .vib import VariationalBottleneck


class LatentEncoding(NamedTuple):
    """Observation embedding e (B, cond_dim) and the bottleneck posterior N(mu, sigma^2), each (B, z_dim).

    With `bottleneck=False`: mu = e and sigma = 0 (both (B, cond_dim)).
    """

    e: Tensor
    mu: Tensor
    sigma: Tensor


def _group_norm_for(batch_norm: nn.BatchNorm2d) -> nn.Module:
    """GroupNorm with ~16 channels per group (as LeRobot), keeping the activation of timm's BatchNormAct2d."""
    from timm.layers import BatchNormAct2d

    channels = batch_norm.num_features
    groups = max(d for d in range(1, max(channels // 16, 1) + 1) if channels % d == 0)
    norm = nn.GroupNorm(groups, channels)
    if isinstance(batch_norm, BatchNormAct2d):  # timm fuses dropout and activation into the norm
        return nn.Sequential(norm, batch_norm.drop, batch_norm.act)
    return norm


def _use_timm_backbone(encoder: DiffusionRgbEncoder, config: ZPRLConfig) -> None:
    """Swap the torchvision backbone of a LeRobot RGB encoder for a timm CNN, keeping its crop and head."""
    import timm

    backbone = timm.create_model(
        config.vision_backbone_timm, pretrained=config.pretrained_backbone, num_classes=0, global_pool=""
    )
    if config.use_group_norm:
        backbone = _replace_submodules(backbone, lambda m: isinstance(m, nn.BatchNorm2d), _group_norm_for)
    image_shape = next(iter(config.image_features.values())).shape
    height_width = config.crop_shape or config.resize_shape or image_shape[1:]
    feature_map_shape = get_output_shape(backbone, (1, image_shape[0], *height_width))[1:]
    if len(feature_map_shape) != 3:
        raise ValueError(
            f"timm backbone {config.vision_backbone_timm!r} gives features of shape {feature_map_shape}; "
            "the spatial-softmax head needs a CNN feature map (C, H, W)."
        )
    encoder.backbone = backbone
    encoder.pool = SpatialSoftmax(feature_map_shape, num_kp=config.spatial_softmax_num_keypoints)


class VIBLossTerms(NamedTuple):
    """Loss terms of one batch; each None where the training mode does not compute it.

    imitation: the generator's flow / diffusion loss on its training conditioning (the raw embedding e in
        "decoupled" mode, decode(z) in "joint" mode, None in "posthoc" mode).
    vib_imitation: the same loss of a detached copy of the generator conditioned on decode(z) (decoupled,
        posthoc); its gradient reaches only the VIB.
    kl: KL(q(z|e) || N(0, I)) with the config's reduction; recon: MSE(decode(z), e).
    latent: the batch's LatentEncoding; z: the sampled latent (None without bottleneck).
    latent_imitation: the generator's loss conditioned on the detached decode(z) (decoupled mode with
        `latent_generator_weight` > 0); its gradient reaches only the generator.
    """

    imitation: Tensor | None
    vib_imitation: Tensor | None
    kl: Tensor | None
    recon: Tensor | None
    latent: LatentEncoding
    z: Tensor | None
    latent_imitation: Tensor | None = None


class ZPRLModel(DiffusionModel):
    """`DiffusionModel` with the VIB beside the global conditioning and a flow-matching alternative.

    `compute_loss` returns the :class:`VIBLossTerms` of the configured `vib_training` mode; LeRobot's
    `generate_actions` is inherited and conditions the generator as `inference_conditioning` says through
    the overridden `_prepare_global_conditioning`.
    """

    config: ZPRLConfig

    def __init__(self, config: ZPRLConfig):
        super().__init__(config)
        if config.vision_backbone_timm is not None and config.image_features:
            # LeRobot builds torchvision encoders (no weights); their backbone is replaced in place.
            encoders = self.rgb_encoder if isinstance(self.rgb_encoder, nn.ModuleList) else [self.rgb_encoder]
            for encoder in encoders:
                _use_timm_backbone(encoder, config)
        self.vib = (
            VariationalBottleneck(config.cond_dim, config.z_dim, config.vib_hidden_dim, config.vib_num_layers,
                                  config.vib_activation)
            if config.bottleneck
            else None
        )

    # -- bottleneck --------------------------------------------------------------------------------
    def encode_latent(self, batch: dict[str, Tensor]) -> LatentEncoding:
        """Observation embedding e and posterior parameters; `batch` as in `generate_actions`."""
        e = super()._prepare_global_conditioning(batch)
        if self.vib is None:
            return LatentEncoding(e, e, torch.zeros_like(e))
        mu, sigma = self.vib(e)
        return LatentEncoding(e, mu, sigma)

    def decode_latent(self, z: Tensor) -> Tensor:
        """Latent -> UNet conditioning (identity without bottleneck)."""
        return z if self.vib is None else self.vib.decode(z)

    def _prepare_global_conditioning(self, batch: dict[str, Tensor]) -> Tensor:
        """Inference conditioning: decode(mu) ("latent"), or e ("raw", or without bottleneck)."""
        latent = self.encode_latent(batch)
        if self.vib is None or self.config.inference_conditioning == "raw":
            return latent.e
        return self.vib.decode(latent.mu)

    # -- inference ---------------------------------------------------------------------------------
    def sample_noise(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Initial noise of the generator, (B, horizon, action_dim)."""
        return torch.randn(
            (batch_size, self.config.horizon, self.config.action_feature.shape[0]),
            generator=generator,
            device=get_device_from_parameters(self),
            dtype=get_dtype_from_parameters(self),
        )

    def conditional_sample(
        self,
        batch_size: int,
        global_cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Full (B, horizon, action_dim) chunk from noise; a deterministic function of `noise` when given.

        The flow head integrates the velocity with `flow_num_steps` Euler steps. The diffusion head runs
        LeRobot's scheduler loop; DDIM (eta = 0) is deterministic, and for DDPM, whose steps inject fresh
        noise, a generator seeded with 0 is used when `noise` is given without a `generator`.
        """
        if noise is None:
            noise = self.sample_noise(batch_size, generator)
        elif generator is None:
            generator = torch.Generator(device=noise.device).manual_seed(0)
        if self.config.head == "diffusion":
            return super().conditional_sample(batch_size, global_cond, generator, noise)
        sample, dt = noise, 1.0 / self.config.flow_num_steps
        for k in range(self.config.flow_num_steps):
            t = torch.full(sample.shape[:1], k * dt, device=sample.device, dtype=sample.dtype)
            sample = sample + dt * self.unet(sample, self._flow_timestep(t), global_cond=global_cond)
        if self.config.clip_sample:
            sample = sample.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return sample

    def _flow_timestep(self, t: Tensor) -> Tensor:
        """Flow time t in [0, 1] on the UNet's sinusoidal timestep scale [0, num_train_timesteps]."""
        return t * self.config.num_train_timesteps

    # -- training ----------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Tensor]) -> VIBLossTerms:
        """The loss terms of `vib_training` for one batch (see :class:`VIBLossTerms`).

        `batch` as in LeRobot's `DiffusionModel.compute_loss` (images stacked under `observation.images`).
        Random draws happen in LeRobot's order (encoder crops, generator noise, timesteps) before the VIB's
        own, so in "decoupled" mode `imitation` equals stock LeRobot's loss for the same seed and weights.
        """
        actions = batch[ACTION]
        if actions.shape[1] != self.config.horizon or batch[OBS_STATE].shape[1] != self.config.n_obs_steps:
            raise ValueError(
                f"Expected {ACTION} (B, horizon={self.config.horizon}, A) and {OBS_STATE} "
                f"(B, n_obs_steps={self.config.n_obs_steps}, D); got {tuple(actions.shape)} and "
                f"{tuple(batch[OBS_STATE].shape)}. Check the dataset's delta timestamps."
            )
        mode = self.config.vib_training
        latent = self.encode_latent(batch)
        x_in, timestep, target = self._noised_input(actions)
        mask = ~batch[ACTION_IS_PAD].unsqueeze(-1) if self.config.do_mask_loss_for_padding else None

        def generator_loss(cond: Tensor, detached: bool = False) -> Tensor:
            if detached:  # a frozen copy: the gradient reaches `cond` (the VIB) but not the UNet's weights
                params = {name: p.detach() for name, p in self.unet.named_parameters()}
                pred = functional_call(self.unet, params, (x_in, timestep), {"global_cond": cond})
            else:
                pred = self.unet(x_in, timestep, global_cond=cond)
            return _masked_mse(pred, target, mask)

        if self.vib is None:
            return VIBLossTerms(generator_loss(latent.e), None, None, None, latent, None)
        if mode == "joint":
            z = self.vib.sample(latent.mu, latent.sigma)
            kl = self.vib.kl(latent.mu, latent.sigma, self.config.kl_reduction)
            return VIBLossTerms(generator_loss(self.vib.decode(z)), None, kl, None, latent, z)
        imitation = generator_loss(latent.e) if mode == "decoupled" else None
        e = latent.e.detach()
        mu, sigma = self.vib(e)
        z = self.vib.sample(mu, sigma)
        cond = self.vib.decode(z)
        trains_on_latent = mode == "decoupled" and self.config.latent_generator_weight > 0
        return VIBLossTerms(
            imitation=imitation,
            vib_imitation=generator_loss(cond, detached=True),
            kl=self.vib.kl(mu, sigma, self.config.kl_reduction),
            recon=F.mse_loss(cond, e),
            latent=LatentEncoding(latent.e, mu, sigma),
            z=z,
            latent_imitation=generator_loss(cond.detach()) if trains_on_latent else None,
        )

    def _noised_input(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(UNet input, timestep input, regression target) of the configured head for a clean chunk."""
        eps = torch.randn_like(actions)
        if self.config.head == "diffusion":  # DDPM, drawn as LeRobot does
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (actions.shape[0],), device=actions.device
            ).long()
            noisy = self.noise_scheduler.add_noise(actions, eps, timesteps)
            return noisy, timesteps, eps if self.config.prediction_type == "epsilon" else actions
        # Rectified flow: x_t = (1 - t) x0 + t x1 with x0 = eps, x1 the chunk; target velocity x1 - x0.
        t = torch.rand(actions.shape[0], device=actions.device, dtype=actions.dtype)
        x_t = (1 - t[:, None, None]) * eps + t[:, None, None] * actions
        return x_t, self._flow_timestep(t), actions - eps


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error, over the unpadded steps only when a (B, horizon, 1) mask is given (as LeRobot)."""
    loss = F.mse_loss(pred, target, reduction="none")
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / (mask.sum() * loss.shape[-1]).clamp_min(1)


def _rms(x: Tensor) -> Tensor:
    return x.square().mean().sqrt()


class ZPRLPolicy(DiffusionPolicy):
    """LeRobot policy "zprl": diffusion / flow-matching policy with a plug-in variational bottleneck.

    Methods take NORMALISED batches (see `make_zprl_pre_post_processors`) and return normalised actions.
    `select_action`, `predict_action_chunk` and `reset` are LeRobot's (observation / action queues).
    """

    config_class = ZPRLConfig
    name = "zprl"

    def __init__(self, config: ZPRLConfig, **kwargs):
        # DiffusionPolicy.__init__ would build a plain DiffusionModel: initialise its base instead.
        PreTrainedPolicy.__init__(self, config)
        config.validate_features()
        self._queues = None
        self.diffusion = ZPRLModel(config)
        # Training forward passes seen so far: drives the KL warm-up. A Python int (no device op per
        # step), saved with the weights through `get_extra_state`.
        self.num_train_forwards = 0
        self.reset()

    @property
    def action_chunk_slice(self) -> slice:
        """The executable part of a generated (B, horizon, A) chunk (from the current observation)."""
        start = self.config.n_obs_steps - 1
        return slice(start, start + self.config.n_action_steps)

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.num_train_forwards)

    def set_extra_state(self, state: Tensor) -> None:
        self.num_train_forwards = int(state)

    def kl_weight(self) -> float:
        """beta_t: linear warm-up from 0 to `beta` over `beta_warmup_steps` training forward passes."""
        if self.config.beta_warmup_steps == 0:
            return self.config.beta
        return self.config.beta * min(1.0, self.num_train_forwards / self.config.beta_warmup_steps)

    def _stack_cameras(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add `observation.images` (B, n_obs_steps, n_cameras, C, H, W) as LeRobot's model expects."""
        if not self.config.image_features:
            return batch
        batch = dict(batch)
        images = [batch[key] for key in self.config.image_features]
        if self.config.n_obs_steps == 1:
            images = [img.unsqueeze(1) if img.ndim == 4 else img for img in images]
        batch[OBS_IMAGES] = torch.stack(images, dim=-4)
        return batch

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of the `vib_training` mode and float diagnostics.

        loss = imitation + vib_imitation + beta_t * KL + vib_recon_weight * recon
        + latent_generator_weight * latent_imitation, each term where the mode has it (:class:`VIBLossTerms`).
        Info: the terms as `imitation_loss`, `vib_imitation_loss`, `kl_loss`, `recon_loss`,
        `latent_imitation_loss`, plus `kl_nats` (KL summed over z, per sample), `z_rms`, `mu_rms`,
        `sigma_mean` and `beta`.
        """
        terms = self.diffusion.compute_loss(self._stack_cameras(batch))
        beta = self.kl_weight()
        if self.training:
            self.num_train_forwards += 1
        weighted = {"imitation_loss": (terms.imitation, 1.0), "vib_imitation_loss": (terms.vib_imitation, 1.0),
                    "kl_loss": (terms.kl, beta), "recon_loss": (terms.recon, self.config.vib_recon_weight),
                    "latent_imitation_loss": (terms.latent_imitation, self.config.latent_generator_weight)}
        present = {name: value for name, (value, _) in weighted.items() if value is not None}
        loss = sum(value * weighted[name][1] for name, value in present.items())
        diagnostics = dict(present, loss=loss)
        if terms.z is not None:
            mu, sigma = terms.latent.mu.detach(), terms.latent.sigma.detach()
            diagnostics |= {"kl_nats": VariationalBottleneck.kl(mu, sigma, "sum"), "z_rms": _rms(terms.z.detach()),
                            "mu_rms": _rms(mu), "sigma_mean": sigma.mean()}
        values = torch.stack([v.detach().float() for v in diagnostics.values()]).tolist()  # one device sync
        return loss, {**dict(zip(diagnostics, values, strict=True)), "beta": beta}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: every parameter, or only the VIB's in "posthoc" mode."""
        if self.config.vib_training == "posthoc" and self.diffusion.vib is not None:
            return list(self.diffusion.vib.parameters())
        return list(self.parameters())

    # -- online RL interface (docs/INTERFACES.md) --------------------------------------------------
    def encode_latent(self, batch: dict[str, Tensor]) -> LatentEncoding:
        """Observation history (B, n_obs_steps, ...) -> LatentEncoding(e, mu, sigma)."""
        return self.diffusion.encode_latent(self._stack_cameras(batch))

    def decode_latent(self, z: Tensor) -> Tensor:
        """(B, z_dim) latent -> (B, cond_dim) generator conditioning; identity without bottleneck."""
        return self.diffusion.decode_latent(z)

    def sample_noise(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Initial generator noise (B, horizon, action_dim) on the policy's device."""
        return self.diffusion.sample_noise(batch_size, generator)

    def generate(
        self, cond: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Conditioning (B, cond_dim) -> full chunk (B, horizon, action_dim), deterministic given `noise`.

        Gradients are not disabled: wrap in `torch.no_grad()` for a frozen policy.
        """
        return self.diffusion.conditional_sample(
            cond.shape[0], global_cond=cond, generator=generator, noise=noise
        )
