"""V: the convolutional VAE that compresses a 64x64x3 frame to a latent z.

Architecture and loss follow Ha & Schmidhuber (2018): four stride-2 convolutions
(32-64-128-256, kernel 4) down to 2x2x256, dense heads for mu and logvar, and a
decoder of one dense layer and four stride-2 transposed convolutions
(128 k5, 64 k5, 32 k6, 3 k6) ending in a sigmoid. Pure torch: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of V, the convolutional VAE from 64x64x3 frames to z."""

    z_dim: int = 32
    """Size of the latent vector z (32 for CarRacing, 64 for Doom in the paper)."""
    kl_tolerance: float = 0.5
    """The KL term is floored at ``kl_tolerance * z_dim`` nats per frame."""

    def to_dict(self) -> dict:
        return asdict(self)


class ConvVAE(nn.Module):
    """Convolutional VAE on (B, 3, 64, 64) float frames in [0, 1]."""

    def __init__(self, config: VAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else VAEConfig(**kwargs)
        z = self.config.z_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),
        )  # fmt: skip
        self.fc_mu = nn.Linear(2 * 2 * 256, z)
        self.fc_logvar = nn.Linear(2 * 2 * 256, z)
        self.fc_dec = nn.Linear(z, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),
        )  # fmt: skip

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 64, 64) in [0, 1] -> mu, logvar, each (B, Z)."""
        assert x.shape[-3:] == (3, 64, 64), f"expected (B, 3, 64, 64) frames, got {tuple(x.shape)}"
        h = self.encoder(x).flatten(1)  # (B, 1024)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Z) -> (B, 3, 64, 64) in [0, 1]."""
        h = self.fc_dec(z).view(-1, 1024, 1, 1)
        return self.decoder(h)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample from the posterior."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_tolerance: float = 0.5,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paper's loss: summed squared error + max(KL, kl_tolerance * Z), averaged over the batch.

    ``weight`` (broadcast to x, e.g. (B, 1, 64, 64)) scales each pixel's squared error
    in the loss. Returns (loss, reconstruction, kl), each a scalar; the reconstruction
    is the unweighted error and kl is before the floor.
    """
    B, Z = mu.shape
    err = (x - x_hat).pow(2)
    rec = err.flatten(1).sum(1)  # (B,)
    fit = rec if weight is None else (err * weight).flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)  # (B,)
    kl_floored = torch.clamp(kl, min=kl_tolerance * Z)
    return (fit + kl_floored).mean(), rec.mean(), kl.mean()


def danger_weight(
    frames: np.ndarray, danger_pixels, extra: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(B, 1, 64, 64) weights of V's squared error: 1, and ``1 + extra`` on the pixels
    ``danger_pixels(frames)`` marks and their 8 neighbours (a far fireball is a pixel or
    two; its edge counts as much as its centre)."""
    hot = torch.as_tensor(danger_pixels(frames), device=device).float()[:, None]
    return 1.0 + extra * torch.nn.functional.max_pool2d(hot, 3, stride=1, padding=1)


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: str | torch.device = "cpu"):
    """uint8 (..., 64, 64, 3) frames -> float (..., 3, 64, 64) in [0, 1]."""
    t = torch.as_tensor(frames, device=device)
    return t.movedim(-1, -3).float().div_(255.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, 64, 64) in [0, 1] -> uint8 (..., 64, 64, 3)."""
    return (x.movedim(-3, -1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


__all__ = [
    "ConvVAE",
    "VAEConfig",
    "vae_loss",
    "danger_weight",
    "reparameterize",
    "frames_to_tensor",
    "tensor_to_frames",
]
