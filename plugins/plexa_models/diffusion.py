"""`diffusion`: a small DDPM (Ho et al. 2020) with a U-Net-style denoiser.

Training noises an image to a random step t of a fixed schedule (cosine, Nichol & Dhariwal
2021, or linear) and teaches the denoiser to predict that noise. The denoiser is a two-level
U-Net: residual blocks with group norm and a sinusoidal time embedding, strided convolutions
down, transposed convolutions up, skip connections across. Sampling runs the reverse process
from pure noise (`plexa.imagegen.ddpm_sample`, shared with `plexa generate`).

What generates, the denoiser, is what goes to ONNX: inputs `input` (x_t, images scaled to
[-1, 1]) and `timestep` (float step numbers), output the predicted noise; the schedule travels
in the file's metadata so the file alone can sample.
"""

from __future__ import annotations

import math
from typing import Any, Literal

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
    scorer_for,
)


def noise_schedule(kind: str, steps: int) -> np.ndarray:
    """Betas for `steps` steps: cosine (alpha-bar follows a squared cosine) or linear
    (1e-4 to 0.02, rescaled for step counts other than 1000)."""
    if kind == "linear":
        scale = 1000 / steps
        return np.linspace(1e-4 * scale, 0.02 * scale, steps)
    s = 0.008
    f = np.cos((np.arange(steps + 1) / steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(1 - abar[1:] / abar[:-1], 1e-5, 0.999)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the step numbers, as for Transformer positions."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(emb, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """(x_t, t) -> predicted noise, for (C, H, W) images with H and W divisible by 4."""

    def __init__(self, channels: int, widths: list[int], emb: int, groups: int = 8) -> None:
        super().__init__()
        first, second = widths
        self.emb_dim = emb
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv2d(channels, first, 3, padding=1)
        self.down1 = ResBlock(first, first, emb, groups)
        self.pool1 = nn.Conv2d(first, second, 4, stride=2, padding=1)
        self.down2 = ResBlock(second, second, emb, groups)
        self.pool2 = nn.Conv2d(second, second, 4, stride=2, padding=1)
        self.mid = ResBlock(second, second, emb, groups)
        self.up2 = nn.ConvTranspose2d(second, second, 4, stride=2, padding=1)
        self.dec2 = ResBlock(2 * second, second, emb, groups)
        self.up1 = nn.ConvTranspose2d(second, first, 4, stride=2, padding=1)
        self.dec1 = ResBlock(2 * first, first, emb, groups)
        self.out = nn.Sequential(
            nn.GroupNorm(min(groups, first), first), nn.SiLU(), nn.Conv2d(first, channels, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.emb_dim))
        h1 = self.down1(self.stem(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h = self.mid(self.pool2(h2), emb)
        h = self.dec2(torch.cat([self.up2(h), h2], 1), emb)
        h = self.dec1(torch.cat([self.up1(h), h1], 1), emb)
        return self.out(h)


class DenoiserExport(nn.Module):
    """What a diffusion model exports: the denoiser, plus its schedule as metadata."""

    def __init__(self, unet: UNet, betas: np.ndarray, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.unet, self.betas, self.image_shape = unet, betas, tuple(image_shape)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timestep)

    def onnx_inputs(self, n: int) -> dict[str, np.ndarray]:
        """Parity inputs: noisy images at steps spread over the whole schedule."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, *self.image_shape)).astype(np.float32)
        t = rng.integers(0, len(self.betas), n).astype(np.float32)
        return {"input": x, "timestep": t}

    def onnx_metadata(self) -> dict[str, Any]:
        return {
            "kind": "diffusion",
            "image_shape": list(self.image_shape),
            "value_range": [0.0, 1.0],
            "scaled_to": [-1.0, 1.0],
            "steps": len(self.betas),
            "betas": [float(b) for b in self.betas],
        }


class DiffusionModule(GenerativeModule):
    kind = "diffusion"
    score_each_epoch = False  # a hundred denoiser passes per sample: scored at test only

    def __init__(self, config: Diffusion.Config, data: DataSpec) -> None:
        super().__init__(config, data)
        self.unet = UNet(self.image_shape[0], config.widths, config.time_embedding)
        self.betas = noise_schedule(config.schedule, config.steps)
        abar = torch.tensor(np.cumprod(1 - self.betas), dtype=torch.float32)
        self.register_buffer("abar", abar, persistent=False)

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    def _loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = x * 2 - 1  # the reverse process works on [-1, 1]
        n = len(x0)
        t = torch.randint(0, len(self.betas), (n,), generator=generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        abar = self.abar[t].view(n, *([1] * (x0.dim() - 1)))
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        return F.mse_loss(self.unet(noisy, t.float()), noise)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = self.images(batch[0])
        loss = self._loss(x)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self._loss(x, torch.Generator().manual_seed(0))  # the same noise every epoch

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        from plexa.imagegen import ddpm_sample

        was_training = self.unet.training
        self.unet.eval()

        def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                xt, tt = torch.from_numpy(x).to(self.device), torch.from_numpy(t).to(self.device)
                return self.unet(xt, tt).cpu().numpy()

        try:
            return ddpm_sample(denoise, n, self.image_shape, self.betas, seed)
        finally:
            self.unet.train(was_training)

    def export_net(self) -> nn.Module:
        return DenoiserExport(self.unet, self.betas, self.image_shape)


class Diffusion(Architecture):
    tasks = GENERATIVE_TASKS

    class Config(GenerativeConfig):
        steps: int = Field(100, ge=2, description="Diffusion steps T (noising and sampling).")
        schedule: Literal["cosine", "linear"] = Field(
            "cosine", description="The noise schedule (betas over the steps)."
        )
        widths: list[int] = Field(
            default_factory=lambda: [32, 64],
            min_length=2,
            max_length=2,
            description="The U-Net's channels at full resolution, and at half and a quarter.",
        )
        time_embedding: int = Field(
            64, ge=4, description="Size of the step's sinusoidal embedding."
        )

    def build(self, config: Config, data: DataSpec) -> DiffusionModule:
        module = DiffusionModule(config, data)
        module.attach_scorer(scorer_for(data))
        return module

    def export_module(self, model: DiffusionModule) -> nn.Module:
        return model.export_net()

    def search_space(self) -> dict[str, Any]:
        return {
            "steps": {"choice": [50, 100, 200]},
            "schedule": {"choice": ["cosine", "linear"]},
            "widths": {"choice": [[16, 32], [32, 64], [64, 128]]},
            "time_embedding": {"choice": [32, 64, 128]},
        }
