"""`series`: your own time series, from a CSV or Parquet file, cut into windows for forecasting:
the model sees `window` rows and predicts the target columns over the next `horizon` rows.

    data:
      plugin: series
      params:
        path: data/daily-sales.csv       # .parquet / .pq is Parquet, anything else CSV
        time: date                       # timestamps, dates or numbers; rows are sorted by it
        targets: [sales]                 # what is forecast; also the first input channels
        covariates: [promo, temperature] # optional: more input channels
        window: 28
        horizon: 7

- **Order.** Rows are sorted by `time`; two rows with the same time are an error naming both.
  A step is a row: irregular times are kept as they are, not resampled.
- **Splits by time.** Train is the earliest `1 - val_fraction - test_fraction` of the rows, then
  val, then test. Every window, inputs and targets both, lies inside one split: none crosses a
  boundary, so val and test forecast from their own rows only (their first `window` rows are
  context, never forecast). The core shuffles training windows within the train split.
- **Missing values** (empty, NA, NaN, null) in the targets and covariates, per `missing`:
  `interpolate` (default) draws a straight line in time between the nearest known values
  (by their times, so unevenly spaced rows are weighted right); values before a column's
  first known one are filled backward with it, and after its last known one forward.
  `ffill` carries the last known value forward (leading ones, again, filled backward). `drop`
  removes every row with a missing value. Each split is filled on its own, so no value of one
  split comes from another's rows. Interpolation reads the next known value: an input filled
  that way has seen a little of its future; `ffill` never does, for a strict backtest.
- **Normalisation.** Each column is standardised by the mean and std of the train rows alone;
  `normalisation` (per input channel) and `target_normalisation` (per output) go into the
  ONNX export. A target's values are its input channel's, in the same units, which lets the
  `sequence` task score the naive forecast (the last value, repeated) alongside: `naive_mse`
  and `mse_vs_naive`, as for `sequences`.
- **Shapes.** x is (window, targets + covariates). y is (horizon,) for one target and
  (horizon, targets) for several; the network's output is flat, horizon-major: "sales t+1",
  "visits t+1", "sales t+2", ...
- **Memory.** Windows overlap, so cut out they take about `window` times the series' memory.
  Up to `memory_limit_mb` (all splits' windows together) they are held in memory (the fast
  path); above it, each split is a `Stream` whose samples are cut from the normalised series
  (held in memory) as they are read.

The file is read and every value checked when the pipeline is validated, so `plexa validate`
finds a bad row before anything trains (the prepared series is kept for the load that follows,
until the config or the file changes). Every problem is a `plexa.DataError` naming the file,
the row (data rows counted from 1 in the file's order, the header not counted) and the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plexa import DataError
from plexa.plugins import DataPlugin, DataSpec, DataSplits, PluginConfig, Split, Stream

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
TIME_FORMS = (
    "times are numbers, dates or ISO 8601 timestamps (2024-01-31, 2024-01-31T12:00:00, with or "
    "without a zone offset, the same in every row)"
)


class Series(DataPlugin):
    class Config(PluginConfig):
        path: str = Field(
            description="The CSV or Parquet file; a relative path is taken from the pipeline "
            "file's folder."
        )
        time: str = Field(
            description="The column that orders the rows (timestamps, dates or numbers); a "
            "step is a row."
        )
        targets: list[str] = Field(
            min_length=1, description="The columns forecast; also the first input channels."
        )
        covariates: list[str] = Field(
            default_factory=list, description="More input columns, not forecast."
        )
        window: int = Field(48, ge=1, description="Rows the model sees.")
        horizon: int = Field(8, ge=1, description="Rows it forecasts.")
        stride: int = Field(1, ge=1, description="Rows between consecutive windows.")
        val_fraction: float = Field(
            0.15, gt=0, lt=1, description="The share of the rows, after train, for validation."
        )
        test_fraction: float = Field(
            0.15, gt=0, lt=1, description="The share of the rows, the latest, for testing."
        )
        missing: Literal["interpolate", "ffill", "drop"] = Field(
            "interpolate",
            description="Missing target and covariate values: a straight line in time between "
            "the nearest known ones, the last known value carried forward, or the row dropped; "
            "each split filled on its own.",
        )
        format: Literal["auto", "csv", "parquet"] = Field(
            "auto", description="The file's format; auto: Parquet for .parquet and .pq, else CSV."
        )
        delimiter: str = Field(
            ",", min_length=1, max_length=1, description="CSV only: the field separator."
        )
        memory_limit_mb: float = Field(
            256.0,
            ge=0,
            description="The size of all splits' windows up to which they are held in memory; "
            "above it each split is streamed, cut from the series as it is read.",
        )

        @field_validator("path")
        @classmethod
        def _absolute(cls, value: str, info: ValidationInfo) -> str:
            base = (info.context or {}).get("base_dir", Path.cwd())
            path = (Path(base) / value).expanduser().resolve()
            if not path.is_file():
                raise DataError(f"no such file '{path}' (data.params.path)")
            return str(path)

        @model_validator(mode="after")
        def _consistent(self) -> Series.Config:
            if self.val_fraction + self.test_fraction >= 0.9:
                raise ValueError("val_fraction + test_fraction must leave at least 10% to train")
            named = [self.time, *self.targets, *self.covariates]
            twice = sorted({n for n in named if named.count(n) > 1})
            if twice:
                raise ValueError(
                    f"each column may have one role (time, targets, covariates): "
                    f"{', '.join(twice)} named more than once"
                )
            prepare(self)  # every value checked now, so `plexa validate` finds what is wrong
            return self

        def file_format(self) -> str:
            if self.format != "auto":
                return self.format
            return "parquet" if Path(self.path).suffix.lower() in PARQUET_SUFFIXES else "csv"

    def task(self, config: Config) -> str:
        return "sequence"

    def load(self, config: Config, seed: int) -> DataSplits:
        import numpy as np

        parts = prepare(config)
        k = len(config.targets)
        mean = parts[0].mean(0)
        std = parts[0].std(0)
        std = np.where(std > 0, std, 1.0)
        normed = [((p - mean) / std).astype(np.float32) for p in parts]
        span = config.window + config.horizon
        count = sum(len(_starts(len(p), span, config.stride)) for p in normed)
        width = config.window * normed[0].shape[1] + config.horizon * k
        stream = count * width * 4 > config.memory_limit_mb * 2**20
        splits = [
            (_stream if stream else _split)(p, config.window, config.horizon, k, config.stride)
            for p in normed
        ]
        targets = config.targets
        spec = DataSpec(
            task="sequence",
            input_shape=(config.window, len(targets) + len(config.covariates)),
            output_dim=config.horizon * k,
            feature_names=(*targets, *config.covariates),
            target_names=tuple(f"{t} t+{h + 1}" for h in range(config.horizon) for t in targets),
            normalisation={"mean": mean.tolist(), "std": std.tolist()},
            target_normalisation={
                "mean": np.tile(mean[:k], config.horizon).tolist(),
                "std": np.tile(std[:k], config.horizon).tolist(),
            },
        )
        return DataSplits(spec, *splits, source=str(config.path))


# ------------------------------------------------------------------ the rows, checked


# train, val and test: (rows, channels) float64 each, in the file's units, sorted and filled
Parts = tuple["np.ndarray", "np.ndarray", "np.ndarray"]

# the last series prepared, by its config and the file's size and time: the config is built
# more than once per run (validation, the task, the load), the file read once
_last: tuple[tuple[str, int, int], Parts] | None = None


def prepare(config: Series.Config) -> Parts:
    """The series read, checked, sorted, split by time and filled (read-only arrays); every
    problem a DataError."""
    global _last
    path = Path(config.path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    key = (
        config.model_dump_json(exclude={"memory_limit_mb", "stride"}),
        stat.st_size,
        stat.st_mtime_ns,
    )
    if _last is None or _last[0] != key:
        _last = None  # the old one's memory goes before the new one is read
        _last = (key, _prepare(config))
    return _last[1]


def _prepare(config: Series.Config) -> Parts:
    import numpy as np
    import pyarrow as pa

    path = Path(config.path)
    columns = [config.time, *config.targets, *config.covariates]
    table = _read(config, columns)
    stamps, keys = _times(path, table.column(config.time), config.time)
    values = np.stack(
        [
            _numbers(path, table.column(name), name, role)
            for name, role in [(t, "targets") for t in config.targets]
            + [(c, "covariates") for c in config.covariates]
        ],
        axis=1,
    )
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    stamps = stamps.take(pa.array(order))
    rows = order + 1
    same = np.flatnonzero(keys[1:] == keys[:-1])
    if len(same):
        raise DataError(f"{path}: {_duplicates(same, rows, stamps)}; each time may appear once")
    if config.missing == "drop":
        keep = ~np.isnan(values).any(axis=1)
        keys, values = keys[keep], values[keep]
        stamps = stamps.filter(pa.array(keep))
    n = len(values)
    n_test = round(n * config.test_fraction)
    n_val = round(n * config.val_fraction)
    bounds = [(0, n - n_val - n_test), (n - n_val - n_test, n - n_test), (n - n_test, n)]
    span = config.window + config.horizon
    names = (*config.targets, *config.covariates)
    parts = []
    for name, (start, end) in zip(("train", "val", "test"), bounds, strict=True):
        if end - start < span:
            where = (
                f" (times {stamps[start].as_py()} to {stamps[end - 1].as_py()})"
                if end > start
                else ""
            )
            raise DataError(
                f"{path}: the {name} split has {end - start} rows{where}, fewer than "
                f"window + horizon = {span} (data.params.window, horizon); the file has {n} rows"
                + (" with no missing value" if config.missing == "drop" else "")
            )
        t = (keys[start:end] - keys[start]).astype(np.float64)
        part = _filled(path, values[start:end], t, names, name, config.missing)
        part.setflags(write=False)
        parts.append(part)
    return parts[0], parts[1], parts[2]


def _column_names(config: Series.Config) -> list[str]:
    """The file's column names, from its schema alone (Parquet's footer, CSV's first block)."""
    import pyarrow as pa

    path = Path(config.path)
    try:
        if config.file_format() == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import pyarrow.csv as pcsv

        with pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter=config.delimiter)) as f:
            return list(f.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {path} as {config.file_format()}: {exc}") from None


def _check_columns(config: Series.Config, header: list[str]) -> None:
    roles = [("time", [config.time]), ("targets", config.targets)]
    for role, names in [*roles, ("covariates", config.covariates)]:
        for name in names:
            if name not in header:
                raise DataError(
                    f"{config.path}: no column '{name}' (data.params.{role}); "
                    f"its columns are: {', '.join(header)}"
                )


def _read(config: Series.Config, columns: list[str]) -> pa.Table:
    import pyarrow as pa

    path = Path(config.path)
    _check_columns(config, _column_names(config))  # from the schema: names the columns there are
    try:
        if config.file_format() == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        import pyarrow.csv as pcsv

        return pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter=config.delimiter),
            # an empty or NA cell is missing in a column of text too (a number column with one
            # stray word is read as text; its numbers are parsed here, row by row)
            convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True),
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {path} as {config.file_format()}: {exc}") from None


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):  # Parquet's categorical columns
        return column.cast(column.type.value_type)
    return column


def _times(path: Path, column: pa.ChunkedArray, name: str) -> tuple[pa.Array, np.ndarray]:
    """The time column as pyarrow values (for messages) and sortable numbers (int64 for
    timestamps and dates, so nanoseconds apart stay apart; else float64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _plain(column)
    where = f"{path}, column '{name}' (data.params.time)"
    missing = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
    if len(missing):
        raise DataError(f"{path}, row {missing[0] + 1}, column '{name}': no time; {TIME_FORMS}")
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = _parse_times(path, column, name)
        kind = column.type
    array = column.combine_chunks()
    if pa.types.is_date32(kind):  # days; Arrow casts a date32 to int32 only
        keys = array.cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_timestamp(kind) or pa.types.is_date64(kind) or pa.types.is_integer(kind):
        keys = array.cast(pa.int64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        keys = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isfinite(keys))
        if len(bad):
            raise DataError(
                f"{path}, row {bad[0] + 1}, column '{name}': {array[bad[0]].as_py()} is not a time"
            )
    else:
        raise DataError(f"{where} holds {kind} values; {TIME_FORMS}")
    return array, keys


def _parse_times(path: Path, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Text read as numbers, naive timestamps or timestamps with an offset (as UTC): the first
    row decides which; the first row that does not parse that way is named."""
    import pyarrow as pa
    import pyarrow.compute as pc

    forms = (pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"))
    first = column[0].as_py()
    fits = [f for f in forms if _parses(first, f)]
    if not fits:
        raise DataError(
            f"{path}, row 1, column '{name}': cannot read '{first}' as a time; {TIME_FORMS}"
        )
    try:
        return pc.cast(column, fits[0])
    except pa.ArrowInvalid:
        for row, value in enumerate(column.to_pylist(), start=1):
            if not _parses(value, fits[0]):
                raise DataError(
                    f"{path}, row {row}, column '{name}': cannot read '{value}' as a time like "
                    f"row 1's '{first}'; {TIME_FORMS}"
                ) from None
        raise


def _parses(text: str, kind: pa.DataType) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pc.cast(pa.array([text]), kind)
    except pa.ArrowInvalid:
        return False
    return True


def _numbers(path: Path, column: pa.ChunkedArray, name: str, role: str) -> np.ndarray:
    """A target or covariate as float64, NaN where a value is missing; text that is not a
    number, or an infinite value, is a DataError naming its row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _plain(column)
    kind = column.type
    if pa.types.is_null(kind):  # a column with no value at all; _filled names it
        return np.full(len(column), np.nan)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = pc.cast(column, pa.float64()).to_numpy()
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            values = pc.cast(column, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            texts = enumerate(column.to_pylist(), start=1)
            values = np.array([_number(path, v, r, name, role) for r, v in texts])
    else:
        raise DataError(
            f"{path}, column '{name}' (data.params.{role}): holds {kind} values, expected numbers"
        )
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        raise DataError(
            f"{path}, row {bad[0] + 1}, column '{name}': expected a finite number, "
            f"got {values[bad[0]]}"
        )
    return values


def _number(path: Path, text: str | None, row: int, name: str, role: str) -> float:
    import math

    if text is None or not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"{path}, row {row}, column '{name}' (data.params.{role}): expected a number, "
            f"got '{text}'"
        ) from None


def _duplicates(same: np.ndarray, rows: np.ndarray, stamps: pa.Array) -> str:
    """'rows 3 and 9 have the same time 2024-01-05', for the first few times seen twice."""
    groups: list[list[int]] = []
    for i in same.tolist():
        if groups and groups[-1][-1] == i:
            groups[-1].append(i + 1)
        else:
            groups.append([i, i + 1])
    told = [
        f"rows {_and(sorted(rows[g].tolist()))} have the same time {stamps[g[0]].as_py()}"
        for g in groups[:3]
    ]
    more = f" (and {len(groups) - 3} more times)" if len(groups) > 3 else ""
    return "; ".join(told) + more


def _and(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def _filled(
    path: Path, values: np.ndarray, t: np.ndarray, names: tuple[str, ...], split: str, how: str
) -> np.ndarray:
    """One split's values with its gaps filled from its own rows (see the module docstring)."""
    import numpy as np

    out = values.copy()
    for c, name in enumerate(names):
        gaps = np.isnan(out[:, c])
        if not gaps.any():
            continue
        known = np.flatnonzero(~gaps)
        if not len(known):
            raise DataError(
                f"{path}, column '{name}': no value in the {split} split's {len(out)} rows, "
                "so there is nothing to fill its missing values from"
            )
        if how == "interpolate":  # np.interp holds the end values beyond the known range
            out[gaps, c] = np.interp(t[gaps], t[known], out[known, c])
        else:  # ffill; a leading gap takes the first known value
            last = np.maximum.accumulate(np.where(gaps, 0, np.arange(len(out))))
            last[: known[0]] = known[0]
            out[:, c] = out[last, c]
    return out


# ------------------------------------------------------------------ windows


def _starts(rows: int, span: int, stride: int) -> range:
    return range(0, rows - span + 1, stride)


def _split(series: np.ndarray, window: int, horizon: int, k: int, stride: int) -> Split:
    """Every `stride`-th window, cut out: x (n, window, channels), y (n, horizon[, k])."""
    import numpy as np

    span = window + horizon
    cut = np.lib.stride_tricks.sliding_window_view(series, span, axis=0)[::stride]  # (n, C, span)
    x = np.ascontiguousarray(cut[:, :, :window].transpose(0, 2, 1))
    return Split(x, _targets(cut, window, k))


def _targets(cut: np.ndarray, window: int, k: int) -> np.ndarray:
    import numpy as np

    y = cut[:, :k, window:].transpose(0, 2, 1)  # (n, horizon, k)
    return np.ascontiguousarray(y[:, :, 0] if k == 1 else y)


def _stream(series: np.ndarray, window: int, horizon: int, k: int, stride: int) -> Stream:
    import numpy as np

    windows = Windows(series, window, horizon, k, stride)
    cut = np.lib.stride_tricks.sliding_window_view(series[:, :k], window + horizon, axis=0)
    return Stream(windows, _targets(cut[::stride], window, k))


class Windows:
    """A map-style dataset over one split's normalised series: window `i` is cut when read,
    so memory grows with the series, not with window x series. Plain arrays only: it pickles
    into loader workers as it is."""

    def __init__(self, series: np.ndarray, window: int, horizon: int, k: int, stride: int) -> None:
        self.series, self.window, self.horizon, self.k = series, window, horizon, k
        self.stride = stride
        self.count = len(_starts(len(series), window + horizon, stride))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.count <= i < self.count:
            raise IndexError(f"window {i} of {self.count}")
        start = (i % self.count) * self.stride
        end = start + self.window
        x = self.series[start:end].copy()
        y = self.series[end : end + self.horizon, : self.k]
        return x, (y[:, 0] if self.k == 1 else y).copy()
