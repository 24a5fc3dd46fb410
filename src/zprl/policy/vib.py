"""Plug-in variational information bottleneck between an observation embedding and a conditioning."""

import torch
from torch import Tensor, nn


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, out_dim))


class VariationalBottleneck(nn.Module):
    """q(z|e) = N(mu(e), sigma(e)^2) with a compact z, and a decoder z -> conditioning.

    Encoder and decoder are one-hidden-layer MLPs (the decoded conditioning then passes through the
    UNet's own Mish + Linear FiLM layers). `forward(e)` returns (mu, sigma); `sample` draws z with the
    reparameterisation trick; `decode` maps z back to the `cond_dim` conditioning; `kl` is
    KL(q(z|e) || N(0, I)).
    """

    def __init__(
        self,
        cond_dim: int,
        z_dim: int,
        hidden_dim: int,
        log_sigma_min: float = -10.0,
        log_sigma_max: float = 2.0,
    ):
        super().__init__()
        if min(cond_dim, z_dim, hidden_dim) < 1:
            raise ValueError(f"Dimensions must be >= 1; got {cond_dim=}, {z_dim=}, {hidden_dim=}.")
        self.z_dim = z_dim
        self.log_sigma_min = log_sigma_min
        self.log_sigma_max = log_sigma_max
        self.encoder = _mlp(cond_dim, hidden_dim, 2 * z_dim)
        self.decoder = _mlp(z_dim, hidden_dim, cond_dim)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """(B, cond_dim) embedding -> mu, sigma, each (B, z_dim); log sigma is clamped for stability."""
        mu, log_sigma = self.encoder(e).chunk(2, dim=-1)
        return mu, log_sigma.clamp(self.log_sigma_min, self.log_sigma_max).exp()

    @staticmethod
    def sample(mu: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z = mu + sigma * eps, eps ~ N(0, I) (differentiable in mu and sigma)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * eps

    def decode(self, z: Tensor) -> Tensor:
        """(B, z_dim) latent -> (B, cond_dim) conditioning for the action generator."""
        return self.decoder(z)

    @staticmethod
    def kl(mu: Tensor, sigma: Tensor) -> Tensor:
        """Closed-form KL(N(mu, sigma^2) || N(0, I)), summed over z dims and averaged over the batch."""
        per_dim = 0.5 * (mu.square() + sigma.square() - 1.0) - sigma.log()
        return per_dim.sum(dim=-1).mean()
