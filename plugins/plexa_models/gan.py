"""`gan`: a DCGAN-style generator and discriminator with their own adversarial training step.

The generator maps a standard-normal latent to an image through a linear seed at a quarter of
the image size and two strided transposed convolutions (batch norm, ReLU); the discriminator
mirrors it with strided convolutions and LeakyReLU. Training uses the non-saturating loss with
one-sided label smoothing. What generates, the generator, is what goes to ONNX: latent in,
images in [0, 1] out.

With a scorer (digits), every validation scores fresh samples and the best checkpoint follows
that score: a GAN's losses say little about its samples.
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


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: list[int], shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = shape
        first, second = channels
        self.seed_shape = (first, h // 4, w // 4)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, first * (h // 4) * (w // 4)),
            nn.BatchNorm1d(first * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, self.seed_shape),
            nn.ConvTranspose2d(first, second, 4, stride=2, padding=1),
            nn.BatchNorm2d(second),
            nn.ReLU(),
            nn.ConvTranspose2d(second, c, 4, stride=2, padding=1),
            nn.Sigmoid(),  # images in [0, 1], the data's own scale
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, channels: list[int], shape: tuple[int, int, int], dropout: float) -> None:
        super().__init__()
        c, h, w = shape
        first, second = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, first, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Conv2d(first, second, 4, stride=2, padding=1),
            nn.BatchNorm2d(second),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(second * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class GANModule(GenerativeModule):
    kind = "gan"

    def __init__(self, config: GAN.Config, data: DataSpec) -> None:
        super().__init__(config, data)
        self.automatic_optimization = False  # two optimisers, stepped in turn
        self.latent_dim = config.latent_dim
        self.generator = Generator(config.latent_dim, config.g_channels, self.image_shape)
        self.discriminator = Discriminator(config.d_channels, self.image_shape, config.d_dropout)
        self.smoothing = config.label_smoothing
        self.betas = (config.beta1, 0.999)

    def configure_optimizers(self) -> Any:
        return (
            self.optimizer(self.generator.parameters(), self.betas),
            self.optimizer(self.discriminator.parameters(), self.betas),
        )

    def _latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = self.images(batch[0])
        n = len(real)
        fake = self.generator(self._latent(n))

        # discriminator: real -> 1 - smoothing, fake -> 0
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 1 - self.smoothing)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()

        # generator: the non-saturating loss, -log D(G(z))
        logits = self.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict(
            {"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()},
            on_step=False,
            on_epoch=True,
            batch_size=n,
        )

    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on held-out digits against fresh samples."""
        gen = torch.Generator().manual_seed(0)
        fake = self.generator(self._latent(len(x), gen))
        real_logits, fake_logits = self.discriminator(x), self.discriminator(fake)
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        was_training = self.generator.training
        self.generator.eval()
        with torch.no_grad():
            z = self._latent(n, torch.Generator().manual_seed(seed))
            images = self.generator(z).cpu().numpy()
        self.generator.train(was_training)
        return images

    def export_net(self) -> nn.Module:
        return self.generator


class GAN(Architecture):
    tasks = GENERATIVE_TASKS

    class Config(GenerativeConfig):
        latent_dim: int = Field(32, ge=1, description="Size of the generator's normal latent.")
        g_channels: list[int] = Field(
            default_factory=lambda: [128, 64],
            min_length=2,
            max_length=2,
            description="The generator's channels at a quarter and at half the image size.",
        )
        d_channels: list[int] = Field(
            default_factory=lambda: [64, 128],
            min_length=2,
            max_length=2,
            description="The discriminator's two strided convolutions' channels.",
        )
        d_dropout: float = Field(
            0.2, ge=0, lt=1, description="Dropout after each discriminator convolution."
        )
        label_smoothing: float = Field(
            0.1,
            ge=0,
            lt=0.5,
            description="One-sided: the discriminator's target for real images is 1 minus this.",
        )
        beta1: float = Field(
            0.5, ge=0, lt=1, description="Adam's first-moment decay for both networks (DCGAN's)."
        )

    def build(self, config: Config, data: DataSpec) -> GANModule:
        module = GANModule(config, data)
        module.attach_scorer(scorer_for(data))
        return module

    def export_module(self, model: GANModule) -> nn.Module:
        return LatentExport(model.export_net(), model.kind, (model.latent_dim,), model.image_shape)

    def search_space(self) -> dict[str, Any]:
        return {
            "latent_dim": {"choice": [16, 32, 64]},
            "g_channels": {"choice": [[64, 32], [128, 64], [256, 128]]},
            "d_channels": {"choice": [[32, 64], [64, 128]]},
            "d_dropout": {"uniform": [0.0, 0.4]},
            "label_smoothing": {"choice": [0.0, 0.1, 0.2]},
        }
