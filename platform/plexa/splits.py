"""Helpers any data plugin may use: seeded stratified splits and train-fitted standardisation."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from plexa.plugins import PluginConfig, Split


class SplitConfig(PluginConfig):
    """Base Config for data plugins that split one table into train / val / test."""

    val_fraction: float = Field(
        0.15, gt=0, lt=1, description="The share of the samples held out for validation."
    )
    test_fraction: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="The share held out for testing; with val_fraction it leaves at least 10% "
        "to train.",
    )
    split_seed: int | None = Field(
        None,
        description="Seeds the split alone, so several training seeds can be compared on one "
        "split; default: train.seed.",
    )

    def seed_for_split(self, train_seed: int) -> int:
        return train_seed if self.split_seed is None else self.split_seed

    @model_validator(mode="after")
    def _room_to_train(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% to train")
        return self


def split(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool,
) -> tuple[Split, Split, Split]:
    """Train / val / test by seeded shuffling; stratified by label for classification."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    labels = y if stratify else None
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    rest_labels = y[rest] if stratify else None
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1 - test_fraction),
        random_state=seed,
        stratify=rest_labels,
    )
    return tuple(Split(x[i], y[i]) for i in (train, val, test))  # type: ignore[return-value]


def standardise(
    splits: tuple[Split, Split, Split], targets: bool = False
) -> tuple[tuple[Split, Split, Split], dict[str, Any], dict[str, Any]]:
    """Scale features (and regression targets) by the training split's mean and std."""
    train = splits[0]
    mean, std = train.x.mean(0), _nonzero(train.x.std(0))
    t_mean, t_std = (train.y.mean(0), _nonzero(train.y.std(0))) if targets else (0.0, 1.0)
    out = tuple(
        Split(
            ((s.x - mean) / std).astype(np.float32),
            ((s.y - t_mean) / t_std).astype(np.float32) if targets else s.y,
        )
        for s in splits
    )
    norm = {"mean": mean.tolist(), "std": std.tolist()}
    target_norm = {"mean": np.asarray(t_mean).tolist(), "std": np.asarray(t_std).tolist()}
    return out, norm, (target_norm if targets else {})  # type: ignore[return-value]


def _nonzero(std: np.ndarray) -> np.ndarray:
    return np.where(std > 0, std, 1.0)
