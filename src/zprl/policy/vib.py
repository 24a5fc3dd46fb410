"""Plug-in variational information bottleneck between an observation embedding and a conditioning."""

import torch
from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "mish": nn.Mish, "relu": nn.ReLU}
KL_REDUCTIONS = ("mean", "sum")


def vib_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str) -> nn.Sequential:
    """``num_layers`` hidden Linear + activation layers of width ``hidden_dim``, then a linear output."""
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Linear(in_dim, hidden_dim), ACTIVATIONS[activation]()]
        in_dim = hidden_dim
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class VariationalBottleneck(nn.Module):
    """q(z|e) = N(mu(e), sigma(e)^2) with a compact z, and a decoder z -> conditioning.

    Encoder and decoder are MLPs with ``num_layers`` hidden layers (the authors use 3 x 256 GELU).
    ``forward(e)`` returns (mu, sigma); ``sample`` draws z with the reparameterisation trick; ``decode``
    maps z back to the ``cond_dim`` conditioning; ``kl`` is KL(q(z|e) || N(0, I)).

    Args:
        cond_dim: size of the embedding e and of the decoded conditioning.
        z_dim: size of the latent z.
        hidden_dim / num_layers / activation: encoder and decoder MLP shape ("gelu", "mish" or "relu").
        log_sigma_min / log_sigma_max: clamp of log sigma, a numerical guard far outside the trained range.
    """

    def __init__(
        self,
        cond_dim: int,
        z_dim: int,
        hidden_dim: int,
        num_layers: int = 3,
        activation: str = "gelu",
        log_sigma_min: float = -10.0,
        log_sigma_max: float = 2.0,
    ):
        super().__init__()
        if min(cond_dim, z_dim, hidden_dim, num_layers) < 1:
            raise ValueError(f"Dimensions must be >= 1; got {cond_dim=}, {z_dim=}, {hidden_dim=}, {num_layers=}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}. Got {activation!r}.")
        self.z_dim = z_dim
        self.log_sigma_min = log_sigma_min
        self.log_sigma_max = log_sigma_max
        self.encoder = vib_mlp(cond_dim, hidden_dim, 2 * z_dim, num_layers, activation)
        self.decoder = vib_mlp(z_dim, hidden_dim, cond_dim, num_layers, activation)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """(B, cond_dim) embedding -> mu, sigma, each (B, z_dim)."""
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
    def kl(mu: Tensor, sigma: Tensor, reduction: str = "mean") -> Tensor:
        """Closed-form KL(N(mu, sigma^2) || N(0, I)), averaged over the batch.

        ``reduction="mean"`` also averages over the z dimensions (the authors' loss: the per-dimension weight
        is beta / z_dim); ``"sum"`` sums over them (nats per sample).
        """
        per_dim = 0.5 * (mu.square() + sigma.square() - 1.0) - sigma.log()
        if reduction == "mean":
            return per_dim.mean()
        if reduction == "sum":
            return per_dim.sum(dim=-1).mean()
        raise ValueError(f"`kl_reduction` must be one of {KL_REDUCTIONS}. Got {reduction!r}.")
