"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plexa.plugins import DataPlugin, DataSpec, DataSplits
from plexa.splits import SplitConfig, split


class Digits(DataPlugin):
    class Config(SplitConfig):
        flatten: bool = Field(False, description="(64,) vectors instead of (1, 8, 8) images.")
        task: Literal["classification", "generative"] = Field(
            "classification",
            description="generative: the same images for an image generator (gan, vae, "
            "diffusion) to learn; their labels stay with them, for scoring.",
        )

    def task(self, config: Config) -> str:
        return config.task

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
        shape = (64,) if config.flatten else (1, 8, 8)
        x = x.reshape(len(x), *shape)
        y = bunch.target.astype(np.int64)
        train, val, test = split(
            x, y, config.val_fraction, config.test_fraction, config.seed_for_split(seed), True
        )
        spec = DataSpec(
            task=config.task,
            input_shape=shape,
            num_classes=10,
            class_names=tuple(str(i) for i in range(10)),
            normalisation={"mean": 0.0, "std": 16.0, "raw": "pixel intensities 0..16"},
        )
        return DataSplits(spec, train, val, test)
