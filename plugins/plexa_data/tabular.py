"""`tabular`: scikit-learn's bundled tables, standardised on the training split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plexa.plugins import DataPlugin, DataSpec, DataSplits
from plexa.splits import SplitConfig, split, standardise

_REGRESSION = {"diabetes"}


class Tabular(DataPlugin):
    class Config(SplitConfig):
        dataset: Literal["iris", "wine", "breast_cancer", "diabetes"] = Field(
            "iris",
            description="The scikit-learn table; diabetes is a regression, the others "
            "classifications. Features are standardised on the training split.",
        )

    def task(self, config: Config) -> str:
        return "regression" if config.dataset in _REGRESSION else "classification"

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{config.dataset}")()
        task = self.task(config)
        x = bunch.data.astype(np.float64)
        classify = task == "classification"
        y = bunch.target.astype(np.int64 if classify else np.float64)
        if not classify:
            y = y.reshape(-1, 1)
        parts = split(
            x, y, config.val_fraction, config.test_fraction, config.seed_for_split(seed), classify
        )
        (train, val, test), norm, target_norm = standardise(parts, targets=not classify)
        names = getattr(bunch, "target_names", None)
        spec = DataSpec(
            task=task,
            input_shape=(x.shape[1],),
            num_classes=len(names) if classify else None,
            class_names=tuple(str(n) for n in names) if classify else None,
            output_dim=None if classify else 1,
            feature_names=tuple(str(f) for f in bunch.feature_names),
            target_names=None if classify else ("target",),
            normalisation=norm,
            target_normalisation=target_norm,
        )
        return DataSplits(spec, train, val, test)
