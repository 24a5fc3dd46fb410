"""ZPRL policy: VIB maths, identity ablation, both heads, determinism, save/load, training signal."""

import json

import numpy as np
import pytest
import torch
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
from torch.distributions import Normal, kl_divergence

from zprl.policy import (
    LatentEncoding,
    VariationalBottleneck,
    ZPRLConfig,
    ZPRLPolicy,
    make_zprl_pre_post_processors,
    zprl_config_for,
)

STATE, ENV, ACT = 9, 10, 7
TINY = {"down_dims": (16, 32), "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "vib_hidden_dim": 32,
        "device": "cpu"}
B = 6


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_policy(**overrides) -> ZPRLPolicy:
    return ZPRLPolicy(zprl_config_for(STATE, ENV, ACT, **{**TINY, **overrides}))


def lowdim_batch(batch_size: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(batch_size, 2, STATE, generator=g)
    env = torch.randn(batch_size, 2, ENV, generator=g)
    # Actions depend on the observation so that conditioning matters.
    action = torch.tanh(state[:, -1:, :ACT] + 0.1 * torch.arange(8.0)[None, :, None])
    return {
        "observation.state": state,
        "observation.environment_state": env,
        "action": action,
        "action_is_pad": torch.zeros(batch_size, 8, dtype=torch.bool),
    }


def obs_only(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Latest observation of each key, without time dim: what an env step gives `select_action`."""
    return {k: v[:, -1] for k, v in batch.items() if k.startswith("observation.")}


def test_kl_matches_closed_form_by_hand():
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.7]])
    sigma = torch.tensor([[1.0, 0.5, 2.0], [0.1, 1.5, 0.8]])
    by_hand = (0.5 * (mu**2 + sigma**2 - 1) - torch.log(sigma)).sum(-1).mean()
    reference = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1).mean()
    kl = VariationalBottleneck.kl(mu, sigma, "sum")
    torch.testing.assert_close(kl, by_hand)
    torch.testing.assert_close(kl, reference)
    # The authors' reduction (the default) also averages over the z dimensions.
    torch.testing.assert_close(VariationalBottleneck.kl(mu, sigma), reference / mu.shape[-1])
    assert VariationalBottleneck.kl(torch.zeros(4, 3), torch.ones(4, 3)).item() == 0.0


def test_vib_shapes_clamp_and_reparameterisation():
    vib = VariationalBottleneck(cond_dim=12, z_dim=3, hidden_dim=8)
    mu, sigma = vib(1e4 * torch.randn(5, 12))
    assert mu.shape == sigma.shape == (5, 3)
    assert (sigma >= np.exp(vib.log_sigma_min) * 0.999).all()
    assert (sigma <= np.exp(vib.log_sigma_max) * 1.001).all()
    z = vib.sample(mu, sigma)
    z.sum().backward()
    assert vib.encoder[0].weight.grad is not None
    assert vib.decode(z).shape == (5, 12)


def test_bottleneck_off_is_identity_path():
    policy = tiny_policy(bottleneck=False)
    assert policy.diffusion.vib is None
    batch = lowdim_batch()
    latent = policy.encode_latent(batch)
    assert isinstance(latent, LatentEncoding)
    assert latent.e.shape == (B, policy.config.cond_dim)
    assert torch.equal(latent.mu, latent.e) and torch.count_nonzero(latent.sigma) == 0
    assert torch.equal(policy.decode_latent(latent.mu), latent.e)
    loss, info = policy.forward(batch)
    assert set(info) == {"loss", "imitation_loss", "beta"} and info["loss"] == pytest.approx(info["imitation_loss"])


def test_bottleneck_on_latent_shapes():
    policy = tiny_policy(z_dim=5)
    latent = policy.encode_latent(lowdim_batch())
    assert latent.e.shape == (B, policy.config.cond_dim) == (B, 2 * (STATE + ENV))
    assert latent.mu.shape == latent.sigma.shape == (B, 5) and (latent.sigma > 0).all()
    assert policy.decode_latent(latent.mu).shape == (B, policy.config.cond_dim)


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_heads_shapes_and_determinism(head):
    policy = tiny_policy(head=head).eval()
    batch = lowdim_batch()
    cond = policy.decode_latent(policy.encode_latent(batch).mu)
    noise = policy.sample_noise(B, generator=torch.Generator().manual_seed(1))
    assert noise.shape == (B, 8, ACT)
    chunk = policy.generate(cond, noise=noise)
    assert chunk.shape == (B, 8, ACT)
    torch.manual_seed(123)  # a different global RNG state must not matter
    assert torch.equal(chunk, policy.generate(cond, noise=noise))
    assert not torch.allclose(chunk, policy.generate(cond, noise=torch.randn_like(noise)))
    # select_action runs the same generator through LeRobot's queues, which start by repeating the
    # first observation n_obs_steps times.
    policy.reset()
    action = policy.select_action(obs_only(batch), noise=noise)
    assert action.shape == (B, ACT)
    repeated = {k: v[:, -1:].expand_as(v) for k, v in batch.items() if k.startswith("observation.")}
    chunk = policy.generate(policy.decode_latent(policy.encode_latent(repeated).mu), noise=noise)
    torch.testing.assert_close(action, chunk[:, policy.action_chunk_slice][:, 0])
    assert policy.predict_action_chunk(batch, noise=noise).shape == (B, 4, ACT)


def test_ddpm_sampling_is_deterministic_given_noise():
    policy = tiny_policy(noise_scheduler_type="DDPM", num_train_timesteps=20, num_inference_steps=None).eval()
    cond = policy.decode_latent(policy.encode_latent(lowdim_batch()).mu)
    noise = policy.sample_noise(B)
    assert torch.equal(policy.generate(cond, noise=noise), policy.generate(cond, noise=noise))


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_save_load_round_trip_with_processors(tmp_path, head):
    policy = tiny_policy(head=head).eval()
    batch = lowdim_batch()
    stats = {
        key: {
            "min": batch[key].amin(dim=(0, 1)).numpy(),
            "max": batch[key].amax(dim=(0, 1)).numpy(),
            "mean": batch[key].mean(dim=(0, 1)).numpy(),
            "std": batch[key].std(dim=(0, 1)).numpy(),
        }
        for key in ("observation.state", "observation.environment_state", "action")
    }
    pre, post = make_zprl_pre_post_processors(policy.config, dataset_stats=stats)
    noise = policy.sample_noise(B)
    obs = obs_only(batch)
    expected = post(policy.select_action(pre(dict(obs)), noise=noise))

    policy.save_pretrained(tmp_path)
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["type"] == "zprl"
    assert (tmp_path / "model.safetensors").exists()

    loaded = get_policy_class("zprl").from_pretrained(tmp_path)
    assert isinstance(loaded, ZPRLPolicy) and loaded.config.head == head
    pre2, post2 = make_pre_post_processors(loaded.config, pretrained_path=str(tmp_path))
    actual = post2(loaded.select_action(pre2(dict(obs)), noise=noise))
    torch.testing.assert_close(actual, expected)
    # The postprocessor really unnormalises: actions are back in the data range, not in [-1, 1].
    assert not torch.allclose(actual, policy.select_action(pre(dict(obs)), noise=noise))


@pytest.mark.parametrize("mode", ["decoupled", "joint", "posthoc"])
def test_forward_finite_loss_and_gradients_reach_vib(mode):
    policy = tiny_policy(vib_training=mode, beta=0.1).train()
    loss, info = policy.forward(lowdim_batch())
    terms = {"decoupled": {"imitation_loss", "vib_imitation_loss", "kl_loss", "recon_loss"},
             "joint": {"imitation_loss", "kl_loss"}, "posthoc": {"vib_imitation_loss", "kl_loss", "recon_loss"}}[mode]
    assert torch.isfinite(loss) and set(info) == terms | {"loss", "kl_nats", "z_rms", "mu_rms", "sigma_mean", "beta"}
    assert all(isinstance(v, float) for v in info.values())
    weights = {"kl_loss": info["beta"], "recon_loss": policy.config.vib_recon_weight}
    assert info["loss"] == pytest.approx(sum(info[t] * weights.get(t, 1.0) for t in terms), rel=1e-5)
    assert info["kl_nats"] == pytest.approx(info["kl_loss"] * policy.config.z_dim, rel=1e-5)
    loss.backward()
    for name, param in policy.diffusion.vib.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_decoupled_vib_terms_give_no_gradient_to_encoder_and_generator():
    policy = tiny_policy(vib_training="decoupled", beta=0.1).train()
    terms = policy.diffusion.compute_loss(lowdim_batch())
    (terms.vib_imitation + terms.kl + terms.recon).backward()
    outside = {n: p for n, p in policy.named_parameters() if not n.startswith("diffusion.vib.")}
    assert outside and all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in outside.values())
    assert all(torch.count_nonzero(p.grad) > 0 for p in policy.diffusion.vib.parameters())
    # ... while the imitation term trains the generator and never the VIB.
    policy.zero_grad(set_to_none=True)
    policy.diffusion.compute_loss(lowdim_batch()).imitation.backward()
    assert all(p.grad is None for p in policy.diffusion.vib.parameters())
    assert torch.count_nonzero(policy.diffusion.unet.final_conv[-1].weight.grad) > 0


def test_latent_generator_loss_trains_only_the_generator():
    """latent_generator_weight > 0: the generator also learns from decode(z); the VIB and the encoder do not."""
    assert tiny_policy(vib_training="decoupled").diffusion.compute_loss(lowdim_batch()).latent_imitation is None
    policy = tiny_policy(vib_training="decoupled", latent_generator_weight=0.5).train()
    terms = policy.diffusion.compute_loss(lowdim_batch())
    terms.latent_imitation.backward()
    assert all(p.grad is None for p in policy.diffusion.vib.parameters())
    assert torch.count_nonzero(policy.diffusion.unet.final_conv[-1].weight.grad) > 0
    loss, info = policy.forward(lowdim_batch())
    assert info["latent_imitation_loss"] > 0
    with pytest.raises(ValueError, match="latent_generator_weight"):
        tiny_policy(vib_training="joint", latent_generator_weight=0.5)


def test_decoupled_imitation_equals_stock_lerobot_loss():
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    policy = tiny_policy(vib_training="decoupled").train()
    fields = {k: v for k, v in vars(policy.config).items() if k in DiffusionConfig.__dataclass_fields__}
    stock = DiffusionPolicy(DiffusionConfig(**fields)).train()
    missing, unexpected = stock.load_state_dict(policy.state_dict(), strict=False)
    assert not missing and all(k.startswith("diffusion.vib.") or k.endswith("_extra_state") for k in unexpected)
    batch = lowdim_batch()
    torch.manual_seed(11)
    ours = policy.diffusion.compute_loss(batch).imitation
    torch.manual_seed(11)
    theirs, _ = stock.forward(batch)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("conditioning", ["latent", "raw"])
def test_inference_conditioning(conditioning):
    policy = tiny_policy(inference_conditioning=conditioning).eval()
    batch = lowdim_batch()
    latent = policy.encode_latent(batch)
    expected = latent.e if conditioning == "raw" else policy.decode_latent(latent.mu)
    torch.testing.assert_close(policy.diffusion._prepare_global_conditioning(batch), expected)


def test_raw_conditioning_needs_a_generator_trained_on_e():
    with pytest.raises(ValueError, match="inference_conditioning='raw'"):
        tiny_policy(vib_training="joint", inference_conditioning="raw")


def test_posthoc_optimises_only_the_vib():
    policy = tiny_policy(vib_training="posthoc")
    assert {id(p) for p in policy.trainable_parameters()} == {id(p) for p in policy.diffusion.vib.parameters()}
    assert len(tiny_policy().trainable_parameters()) == len(list(policy.parameters()))


def test_beta_warmup_is_linear():
    policy = tiny_policy(beta=0.5, beta_warmup_steps=4).train()
    betas = [policy.forward(lowdim_batch())[1]["beta"] for _ in range(6)]
    assert betas == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    policy.eval()
    assert policy.forward(lowdim_batch())[1]["beta"] == 0.5
    assert policy.num_train_forwards == 6  # eval forwards do not advance the warm-up


def test_warmup_progress_is_saved_with_the_weights(tmp_path):
    policy = tiny_policy(beta=0.5, beta_warmup_steps=4).train()
    for _ in range(2):
        policy.forward(lowdim_batch())
    policy.save_pretrained(tmp_path)
    loaded = ZPRLPolicy.from_pretrained(tmp_path)
    assert loaded.num_train_forwards == 2 and loaded.kl_weight() == pytest.approx(0.25)
    restored = tiny_policy(beta=0.5, beta_warmup_steps=4)
    restored.load_state_dict(policy.state_dict())  # e.g. a Lightning checkpoint
    assert restored.num_train_forwards == 2


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_optimizer_steps_lower_the_loss(head):
    policy = tiny_policy(head=head)
    batch = lowdim_batch(batch_size=16)

    def eval_loss() -> float:
        policy.eval()
        torch.manual_seed(7)  # same noise and timesteps for both evaluations
        with torch.no_grad():
            return sum(policy.forward(batch)[0].item() for _ in range(8)) / 8

    before = eval_loss()
    policy.train()
    optimizer = torch.optim.Adam(policy.get_optim_params(), lr=3e-3)
    for _ in range(60):
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert eval_loss() < 0.85 * before


@pytest.mark.parametrize("backbone", [None, "resnet10t"])
def test_two_camera_image_policy(backbone):
    # 64x64 images: the ResNet feature map must be larger than 1x1 for the spatial softmax to pass
    # gradients to the backbone.
    config = zprl_config_for(
        STATE, 0, ACT, camera_names=("agentview", "wrist"), image_shape=(3, 64, 64),
        crop_shape=(56, 56), vision_backbone_timm=backbone, spatial_softmax_num_keypoints=8, **TINY,
    )
    policy = ZPRLPolicy(config)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in policy.modules())
    g = torch.Generator().manual_seed(0)
    batch = {
        "observation.state": torch.randn(2, 2, STATE, generator=g),
        "observation.images.agentview": torch.rand(2, 2, 3, 64, 64, generator=g),
        "observation.images.wrist": torch.rand(2, 2, 3, 64, 64, generator=g),
        "action": torch.randn(2, 8, ACT, generator=g),
        "action_is_pad": torch.zeros(2, 8, dtype=torch.bool),
    }
    loss, _ = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
    for encoder in policy.diffusion.rgb_encoder:  # one encoder per camera, both trained
        assert next(encoder.backbone.parameters()).grad.abs().sum() > 0
    assert policy.encode_latent(batch).e.shape == (2, config.cond_dim) == (2, 2 * (STATE + 2 * 2 * 8))
    policy.eval().reset()
    assert policy.select_action(obs_only(batch)).shape == (2, ACT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head": "gan"}, "`head` must be one of"),
        ({"z_dim": 0}, "`z_dim` must be >= 1"),
        ({"beta": -1.0}, "`beta` must be >= 0"),
        ({"flow_num_steps": 0}, "`flow_num_steps` must be >= 1"),
        ({"n_action_steps": 8}, "`n_action_steps` must be in"),
        ({"vision_backbone_timm": "not_a_net"}, "is not a timm model"),
        ({"pretrained_backbone": True}, "only applies to `vision_backbone_timm`"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        zprl_config_for(STATE, ENV, ACT, **{**TINY, **overrides})


def test_lerobot_factory_resolves_zprl():
    config = make_policy_config("zprl", head="flow", device="cpu")
    assert isinstance(config, ZPRLConfig) and config.type == "zprl"
    assert get_policy_class("zprl") is ZPRLPolicy
    pre, post = make_pre_post_processors(zprl_config_for(STATE, ENV, ACT, **TINY))
    assert pre.name == "policy_preprocessor" and post.name == "policy_postprocessor"


def test_missing_features_are_reported():
    with pytest.raises(ValueError, match="needs a `observation.state`"):
        ZPRLPolicy(ZPRLConfig(device="cpu"))
    with pytest.raises(ValueError, match="at least one image or the environment state"):
        zprl_config_for(STATE, 0, ACT, device="cpu")
