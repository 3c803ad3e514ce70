"""`sequences`: generated noisy series, each a sum of sines of several frequencies, cut into
windows for forecasting: the model sees `window` steps and predicts the next `horizon`.

The series are made by a seeded generator (no download), and split by series, so no test
window overlaps a training window. Targets are the noisy future values, in the same units as
the input, which lets the `sequence` task score the naive last-value forecast alongside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, Split

if TYPE_CHECKING:
    import numpy as np


class Sequences(DataPlugin):
    class Config(PluginConfig):
        series: int = Field(300, ge=10, description="Independent series generated.")
        length: int = Field(200, ge=2, description="Steps per series.")
        window: int = Field(48, ge=1, description="Steps the model sees.")
        horizon: int = Field(8, ge=1, description="Steps it forecasts; window + horizon fit.")
        stride: int = Field(4, ge=1, description="Steps between consecutive windows of one series.")
        components: int = Field(3, ge=1, description="Sines summed per series.")
        min_period: float = Field(
            8.0, gt=2, description="Shortest period, in steps (above 2, the Nyquist limit)."
        )
        max_period: float = Field(64.0, gt=2, description="Longest period, in steps.")
        noise: float = Field(
            0.1, ge=0, description="Standard deviation of the added Gaussian noise."
        )
        val_fraction: float = Field(
            0.15, gt=0, lt=1, description="The share of the series held out for validation."
        )
        test_fraction: float = Field(
            0.15, gt=0, lt=1, description="The share of the series held out for testing."
        )
        data_seed: int = Field(
            0, description="Seeds the series and their split, whatever the training seed."
        )

        @model_validator(mode="after")
        def _consistent(self) -> Sequences.Config:
            if self.window + self.horizon > self.length:
                raise ValueError(
                    f"window ({self.window}) + horizon ({self.horizon}) must fit in a series "
                    f"of length {self.length}"
                )
            if self.min_period > self.max_period:
                raise ValueError("min_period must not exceed max_period")
            if self.val_fraction + self.test_fraction >= 0.9:
                raise ValueError("val_fraction + test_fraction must leave at least 10% to train")
            return self

    def task(self, config: Config) -> str:
        return "sequence"

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        rng = np.random.default_rng(config.data_seed)
        series = generate(config, rng)
        order = rng.permutation(config.series)
        n_test = max(1, round(config.series * config.test_fraction))
        n_val = max(1, round(config.series * config.val_fraction))
        groups = (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])
        train, val, test = (windows(series[np.sort(g)], config) for g in groups)
        spec = DataSpec(
            task="sequence",
            input_shape=(config.window, 1),
            output_dim=config.horizon,
            feature_names=("value",),
            target_names=tuple(f"t+{h + 1}" for h in range(config.horizon)),
        )
        return DataSplits(spec, train, val, test)


def generate(config: Sequences.Config, rng: np.random.Generator) -> np.ndarray:
    """(series, length) float32: per series, random periods, amplitudes and phases, plus noise."""
    import numpy as np

    shape = (config.series, config.components, 1)
    log_period = rng.uniform(np.log(config.min_period), np.log(config.max_period), shape)
    amplitude = rng.uniform(0.2, 1.0, shape)
    phase = rng.uniform(0, 2 * np.pi, shape)
    t = np.arange(config.length)[None, None, :]
    clean = (amplitude * np.sin(2 * np.pi * t / np.exp(log_period) + phase)).sum(1)
    noisy = clean + rng.normal(0.0, config.noise, clean.shape)
    return noisy.astype(np.float32)


def windows(series: np.ndarray, config: Sequences.Config) -> Split:
    """Every `stride`-th window of each series: x (n, window, 1), y (n, horizon)."""
    import numpy as np

    span = config.window + config.horizon
    starts = np.arange(0, config.length - span + 1, config.stride)
    cut = np.stack([series[:, s : s + span] for s in starts], axis=1).reshape(-1, span)
    x = np.ascontiguousarray(cut[:, : config.window, None])
    y = np.ascontiguousarray(cut[:, config.window :])
    return Split(x, y)
