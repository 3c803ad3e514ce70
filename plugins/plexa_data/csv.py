"""`csv`: a user's own CSV file with a header row; numeric features, one target column."""

from __future__ import annotations

import csv as _csv
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, field_validator, model_validator

from plexa.plugins import DataPlugin, DataSpec, DataSplits
from plexa.splits import SplitConfig, split, standardise


def _header(path: Path, delimiter: str) -> list[str]:
    with path.open(newline="") as f:
        return next(_csv.reader(f, delimiter=delimiter), [])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CSV(DataPlugin):
    class Config(SplitConfig):
        path: str  # a relative path is taken from the pipeline file's folder
        target: str
        task: Literal["auto", "classification", "regression"] = "auto"
        features: list[str] | None = None  # default: every column but the target
        delimiter: str = ","

        @field_validator("path")
        @classmethod
        def _absolute(cls, value: str, info: ValidationInfo) -> str:
            base = (info.context or {}).get("base_dir", Path.cwd())
            path = (Path(base) / value).resolve()
            if not path.is_file():
                raise ValueError(f"no such file '{path}'")
            return str(path)

        @model_validator(mode="after")
        def _columns_exist(self) -> CSV.Config:
            columns = _header(Path(self.path), self.delimiter)
            wanted = [self.target, *(self.features or [])]
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise ValueError(
                    f"column(s) {', '.join(missing)} not in {self.path} "
                    f"(columns: {', '.join(columns)})"
                )
            return self

    def _rows(self, config: Config) -> list[dict[str, str]]:
        with Path(config.path).open(newline="") as f:
            return list(_csv.DictReader(f, delimiter=config.delimiter))

    def task(self, config: Config) -> str:
        if config.task != "auto":
            return config.task
        values = [row[config.target] for row in self._rows(config)]
        return "regression" if all(_is_number(v) for v in values) else "classification"

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        rows = self._rows(config)
        if len(rows) < 10:
            raise ValueError(f"{config.path}: {len(rows)} rows; at least 10 are needed to split")
        features = config.features or [c for c in rows[0] if c != config.target]
        x = np.empty((len(rows), len(features)), dtype=np.float64)
        for i, row in enumerate(rows):
            for j, col in enumerate(features):
                try:
                    x[i, j] = float(row[col])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{config.path} line {i + 2}, column '{col}': '{row[col]}' is not a number"
                    ) from None
        task = self.task(config)
        targets = [row[config.target] for row in rows]
        if task == "classification":
            names = sorted(set(targets), key=lambda t: (not _is_number(t), _sortable(t)))
            index = {n: k for k, n in enumerate(names)}
            y = np.array([index[t] for t in targets], dtype=np.int64)
        else:
            try:
                y = np.array([float(t) for t in targets], dtype=np.float64).reshape(-1, 1)
            except ValueError:
                raise ValueError(
                    f"{config.path}: target '{config.target}' has non-numeric values; "
                    "use task: classification"
                ) from None
        classify = task == "classification"
        parts = split(
            x, y, config.val_fraction, config.test_fraction, config.seed_for_split(seed), classify
        )
        (train, val, test), norm, target_norm = standardise(parts, targets=not classify)
        spec = DataSpec(
            task=task,
            input_shape=(len(features),),
            num_classes=len(names) if classify else None,
            class_names=tuple(names) if classify else None,
            output_dim=None if classify else 1,
            feature_names=tuple(features),
            target_names=None if classify else (config.target,),
            normalisation=norm,
            target_normalisation=target_norm,
        )
        return DataSplits(spec, train, val, test)


def _sortable(text: str) -> float | str:
    return float(text) if _is_number(text) else text
