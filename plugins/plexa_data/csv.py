"""`csv`: a user's own CSV file with a header row; numeric features, one target column.

What is wrong with the file itself (missing, empty, not UTF-8, a column it lacks, a value that
is not a number) is a `plexa.DataError` naming the file, the line and the column, raised when
the pipeline is validated, so `plexa validate` finds it before anything is imported or trained.
"""

from __future__ import annotations

import csv as _csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, field_validator, model_validator

from plexa import DataError
from plexa.plugins import DataPlugin, DataSpec, DataSplits
from plexa.splits import SplitConfig, split, standardise

MIN_ROWS = 10  # fewer cannot be split into train, val and test


@dataclass(frozen=True)
class _Table:
    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (the line the row starts on, column -> value)

    def column(self, name: str) -> list[str]:
        return [row[name] for _, row in self.rows]

    def numbers(self, name: str, hint: str = "") -> list[float]:
        """The column as floats; the first value that is not a finite number is a DataError
        (nan and inf too: a missing value would only show up as a nan loss)."""
        out = []
        for line, row in self.rows:
            value = _number(row[name])
            if value is None:
                got = f"'{row[name]}'" if row[name].strip() else "an empty value"
                raise DataError(
                    f"{self.path}, line {line}, column '{name}': expected a number, got {got}{hint}"
                )
            out.append(value)
        return out


def _read(path: Path, delimiter: str) -> _Table:
    """The whole file, checked: readable UTF-8, a header, every row as long as the header."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the CSV file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a BOM: Excel's "CSV UTF-8"
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text: byte {exc.start} cannot be decoded ({exc.reason}); "
            "save it as UTF-8"
        ) from None
    reader = _csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, [])
        if not any(h.strip() for h in header):
            raise DataError(f"{path} is empty: expected a header row naming the columns")
        rows = []
        start = reader.line_num + 1
        for values in reader:
            if values:  # a blank line
                if len(values) != len(header):
                    raise DataError(
                        f"{path}, line {start}: {len(values)} values, but the header (line 1) "
                        f"names {len(header)} columns"
                    )
                rows.append((start, dict(zip(header, values, strict=True))))
            start = reader.line_num + 1
    except _csv.Error as exc:  # e.g. a quote that is never closed
        raise DataError(f"{path}, line {reader.line_num}: {exc}") from None
    return _Table(path, header, rows)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_number(text: str) -> bool:
    return _number(text) is not None


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
                raise DataError(f"no such CSV file '{path}' (data.params.path)")
            return str(path)

        @model_validator(mode="after")
        def _usable(self) -> CSV.Config:
            _checked(self)
            return self

    def task(self, config: Config) -> str:
        return _task(config, _read(Path(config.path), config.delimiter))

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        table = _checked(config)  # again: the file may have changed since validation
        features = _features(config, table)
        x = np.array([table.numbers(col) for col in features], dtype=np.float64).T
        task = _task(config, table)
        targets = table.column(config.target)
        if task == "classification":
            names = sorted(set(targets), key=lambda t: (not _is_number(t), _sortable(t)))
            index = {n: k for k, n in enumerate(names)}
            y = np.array([index[t] for t in targets], dtype=np.int64)
        else:
            y = np.array(table.numbers(config.target), dtype=np.float64).reshape(-1, 1)
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


def _features(config: CSV.Config, table: _Table) -> list[str]:
    return config.features or [c for c in table.header if c != config.target]


def _task(config: CSV.Config, table: _Table) -> str:
    if config.task != "auto":
        return config.task
    numeric = all(_is_number(v) for v in table.column(config.target))
    return "regression" if numeric else "classification"


def _checked(config: CSV.Config) -> _Table:
    """The file read and checked against the config: the columns it names, enough rows, and
    numbers wherever a number is needed (the features; the target of a regression)."""
    path = Path(config.path)
    table = _read(path, config.delimiter)
    for role, names in (("target", [config.target]), ("features", config.features or [])):
        for name in names:
            if name not in table.header:
                raise DataError(
                    f"{path}, line 1, column '{name}': no such column (data.params.{role}); "
                    f"the header names: {', '.join(table.header)}"
                )
    if len(table.rows) < MIN_ROWS:
        raise DataError(
            f"{path}: {len(table.rows)} data rows; at least {MIN_ROWS} are needed to split into "
            "train, val and test"
        )
    features = _features(config, table)
    if not features:
        raise DataError(f"{path}: the target '{config.target}' is its only column")
    hint = (
        " (features are numbers; to leave this column out, list the others in data.params.features)"
    )
    for col in features:
        table.numbers(col, hint)
    if config.task == "regression":
        table.numbers(config.target, " (a regression target; for labels use task: classification)")
    return table


def _sortable(text: str) -> float | str:
    return float(text) if _is_number(text) else text
