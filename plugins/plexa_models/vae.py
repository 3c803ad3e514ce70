"""`vae`: a convolutional variational autoencoder trained on the ELBO, with KL annealing.

The encoder (two strided convolutions) gives a diagonal Gaussian q(z|x); the decoder mirrors it
with transposed convolutions and gives Bernoulli logits per pixel (the data are intensities in
[0, 1]). The KL term's weight rises linearly from 0 to `beta` over `kl_warmup_epochs`, so the
decoder learns to use the latent before the prior pulls it in (Bowman et al. 2016). What
generates, the decoder, is what goes to ONNX: latent in, images in [0, 1] out.

Validation and test report the full ELBO (weight `beta`), comparable across epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plexa.plugins import Architecture, DataSpec
from plexa_models.generative import (
    GENERATIVE_TASKS,
    GenerativeConfig,
    GenerativeModule,
    LatentExport,
    scorer_for,
)


class Encoder(nn.Module):
    def __init__(self, channels: list[int], hidden: int, latent: int, shape: tuple) -> None:
        super().__init__()
        c, h, w = shape
        first, second = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, first, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(second * (h // 4) * (w // 4), hidden),
            nn.ReLU(),
        )
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mean(h), self.log_var(h)


class Decoder(nn.Module):
    """Latent -> pixel logits; `Probabilities` turns them into images for export."""

    def __init__(self, channels: list[int], hidden: int, latent: int, shape: tuple) -> None:
        super().__init__()
        c, h, w = shape
        first, second = channels
        self.net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, second * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (second, h // 4, w // 4)),
            nn.ConvTranspose2d(second, first, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(first, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Probabilities(nn.Module):
    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))


class VAEModule(GenerativeModule):
    kind = "vae"

    def __init__(self, config: VAE.Config, data: DataSpec) -> None:
        super().__init__(config, data)
        self.latent_dim = config.latent_dim
        self.beta, self.warmup = config.beta, config.kl_warmup_epochs
        self.encoder = Encoder(config.channels, config.hidden, config.latent_dim, self.image_shape)
        self.decoder = Decoder(config.channels, config.hidden, config.latent_dim, self.image_shape)

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample reconstruction and KL terms (nats), and the reconstruction logits."""
        mean, log_var = self.encoder(x)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        logits = self.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
        return recon, kl, logits

    def kl_weight(self, batch_idx: int = 0) -> float:
        """Linear from 0 to `beta` over the warm-up epochs, by optimiser step."""
        if self.warmup <= 0:
            return self.beta
        per_epoch = max(1, self.trainer.num_training_batches) if self._trainer else 1
        progress = (self.current_epoch + batch_idx / per_epoch) / self.warmup
        return self.beta * min(1.0, progress)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = self.images(batch[0])
        recon, kl, _ = self._terms(x)
        weight = self.kl_weight(batch_idx)
        loss = (recon + weight * kl).mean()
        self.log_dict(
            {"train/loss": loss.detach(), "train/recon": recon.mean(), "train/kl": kl.mean()},
            on_step=False,
            on_epoch=True,
            batch_size=len(x),
        )
        self.log("train/kl_weight", weight, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same posterior draws every epoch
            recon, kl, _ = self._terms(x)
        return (recon + self.beta * kl).mean()

    def extra_grids(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Held-out digits (top half) over their reconstructions (bottom half)."""
        with torch.no_grad():
            mean, _ = self.encoder(x)
            recon = torch.sigmoid(self.decoder(mean))
        both = torch.cat([x, recon]).cpu().numpy()
        return {"reconstructions": self._grid(both)}

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return torch.sigmoid(self.decoder(z.to(self.device))).cpu().numpy()

    def export_net(self) -> nn.Module:
        return Probabilities(self.decoder)


class VAE(Architecture):
    tasks = GENERATIVE_TASKS

    class Config(GenerativeConfig):
        latent_dim: int = Field(16, ge=1, description="Size of the Gaussian latent.")
        channels: list[int] = Field(
            default_factory=lambda: [32, 64],
            min_length=2,
            max_length=2,
            description="The encoder's two strided convolutions' channels (the decoder mirrors "
            "them).",
        )
        hidden: int = Field(
            256, ge=1, description="Units of the dense layer between convolutions and latent."
        )
        beta: float = Field(
            1.0, gt=0, description="The KL term's weight after warm-up; 1 is the ELBO."
        )
        kl_warmup_epochs: float = Field(
            10.0, ge=0, description="Epochs over which the KL weight rises linearly from 0."
        )

    def build(self, config: Config, data: DataSpec) -> VAEModule:
        module = VAEModule(config, data)
        module.attach_scorer(scorer_for(data))
        return module

    def export_module(self, model: VAEModule) -> nn.Module:
        return LatentExport(model.export_net(), model.kind, (model.latent_dim,), model.image_shape)

    def search_space(self) -> dict[str, Any]:
        return {
            "latent_dim": {"choice": [8, 16, 32]},
            "channels": {"choice": [[16, 32], [32, 64], [64, 128]]},
            "hidden": {"choice": [128, 256, 512]},
            "kl_warmup_epochs": {"uniform": [0.0, 20.0]},
        }
