"""What the image generators (`gan`, `vae`, `diffusion`) share: their own LightningModule base
that logs sample grids while training and scores its samples at test time, and the config keys
that govern both.

Each generator brings its own training step; the core gives it the pipeline's `train` section
(`train_spec`) for its optimisers. Images are the data plugin's (C, H, W) arrays in [0, 1].
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from pydantic import Field
from torch import nn

from plexa.config import TrainSpec
from plexa.optim import make_optimizer
from plexa.plugins import DataSpec, PluginConfig

GENERATIVE_TASKS = frozenset({"generative"})
DIGITS_CLASSES = tuple(str(i) for i in range(10))


class GenerativeConfig(PluginConfig):
    """Keys every generator has besides its network's."""

    sample_every: int = Field(
        5,
        ge=1,
        description="Epochs between the grids of samples logged to MLflow (the last epoch "
        "always logs one).",
    )
    score_samples: int = Field(
        1000,
        ge=10,
        description="Samples scored by plexa's digits classifier at test time (8x8 digits "
        "only; other images are not scored).",
    )


def image_shape(data: DataSpec, plugin: str) -> tuple[int, int, int]:
    """(C, H, W) with H and W divisible by 4 (two down/up-sampling stages), or a clear error."""
    shape = data.input_shape
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] % 4 or shape[2] % 4:
        raise ValueError(
            f"{plugin} needs images (C, H, W) with 1 or 3 channels and H, W divisible by 4; "
            f"the data gives {data.input_shape}"
        )
    return shape  # type: ignore[return-value]


def scorer_for(data: DataSpec, seed: int = 0) -> nn.Module | None:
    """plexa's digits classifier when the data is 8x8 digits; other images are not scored."""
    if tuple(data.input_shape) != (1, 8, 8) or data.class_names != DIGITS_CLASSES:
        return None
    from plexa.scoring import digits_scorer

    return digits_scorer(seed)


class GenerativeModule(L.LightningModule):
    """Base of the generators' LightningModules.

    Subclasses define `training_step`, `validation_loss` (the number the best checkpoint
    follows), `sample(n, seed)` (images in [0, 1]) and `export_net()` (what goes to ONNX).
    """

    kind = ""
    monitor: tuple[str, str] = ("val/loss", "min")
    score_each_epoch = True  # False where sampling is slow (diffusion's many steps)
    val_samples = 500

    def __init__(self, config: GenerativeConfig, data: DataSpec) -> None:
        super().__init__()
        self.config = config
        self.image_shape = image_shape(data, self.kind)
        self.data_shape = tuple(data.input_shape)  # (H, W) data gets a channel axis here
        self.train_spec: TrainSpec = TrainSpec()  # plexa.tasks.wrap sets the pipeline's
        # a plain list: the scorer is a tool, not part of this model's state dict
        self._scorer: list[nn.Module] = []
        self._val: list[torch.Tensor] = []

    def attach_scorer(self, scorer: nn.Module | None) -> None:
        """With a scorer, a generator whose sampling is cheap scores every validation and its
        best checkpoint follows that score: the quality bar is about samples, not a loss."""
        self._scorer[:] = [scorer] if scorer is not None else []
        if scorer is not None and self.score_each_epoch:
            self.monitor = ("val/score", "max")

    # subclasses -------------------------------------------------------------------
    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        raise NotImplementedError

    def export_net(self) -> nn.Module:
        raise NotImplementedError

    def extra_grids(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """More image grids to log next to the samples (the VAE's reconstructions)."""
        return {}

    # shared -----------------------------------------------------------------------
    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), *self.image_shape)

    def optimizer(self, params: Any, betas: tuple[float, float] | None = None) -> Any:
        opt = make_optimizer(params, self.train_spec.optimizer)
        if betas is not None and self.train_spec.optimizer.name != "sgd":
            for group in opt.param_groups:
                group["betas"] = betas
        return opt

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self.images(batch[0])
        if batch_idx == 0:
            self._val = [x[:32]]
        loss = self.validation_loss(x)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer
        if self._scorer and self.score_each_epoch:
            from plexa.scoring import score

            result = score(self.sample(self.val_samples, seed=0), self._scorer[0])
            for name, value in result.metrics("val").items():
                self.log(name, value)
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 1)
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.config.sample_every and not last:
            return
        epoch = trainer.current_epoch + 1
        grids = {"samples": self._grid(self.sample(64, seed=epoch))}
        if self._val:
            grids.update(self.extra_grids(self._val[0]))
        _log_images(grids, epoch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x = self.images(batch[0])
        self.log("test/loss", self.validation_loss(x), on_epoch=True, batch_size=len(x))

    def on_test_epoch_end(self) -> None:
        if not self._scorer:
            return
        from plexa.scoring import score

        result = score(self.sample(self.config.score_samples, seed=12345), self._scorer[0])
        for name, value in result.metrics("test").items():
            self.log(name, value)

    def _grid(self, images: np.ndarray) -> np.ndarray:
        from plexa.imagegen import grid

        return grid(images)


def _log_images(grids: dict[str, np.ndarray], epoch: int) -> None:
    """PNG grids into the run (none outside `plexa run`: nothing to do)."""
    from plexa.artifacts import log_image

    for name, image in grids.items():
        big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)  # 8x8 digits are tiny
        if not log_image(big, f"samples/{name}_epoch{epoch:03d}.png"):
            return


class LatentExport(nn.Module):
    """What a GAN or VAE exports: latent in, images in [0, 1] out, plus what `plexa.export`
    needs to check it (latent inputs) and what `plexa generate` needs to use it (metadata)."""

    def __init__(
        self,
        net: nn.Module,
        kind: str,
        latent_shape: tuple[int, ...],
        image_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.net, self.kind = net, kind
        self.latent_shape, self.image_shape = tuple(latent_shape), tuple(image_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def onnx_inputs(self, n: int) -> dict[str, np.ndarray]:
        """Parity inputs: seeded standard-normal latents, what the generator sees in use."""
        rng = np.random.default_rng(0)
        return {"input": rng.standard_normal((n, *self.latent_shape)).astype(np.float32)}

    def onnx_metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "latent_shape": list(self.latent_shape),
            "image_shape": list(self.image_shape),
            "value_range": [0.0, 1.0],
        }
