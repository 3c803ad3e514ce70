"""`table`: a user's own table (CSV, TSV, Parquet or JSON lines) in one file, a folder or a glob.

    data:
      plugin: table
      params:
        path: data/penguins.csv    # a file, a folder, a glob (data/*.parquet), or a file in an
                                   # installed package: package:palmerpenguins/data/penguins.csv
        target: species
        task: classification       # default auto: text or true/false -> classification,
                                   # numbers -> regression (whole-number class codes: set it)
        features: [island, bill_length_mm, sex]  # default: every column but the target
        categorical: [zip_code]    # whole numbers to take as categories (default: none)
        format: csv                # default: from the extension (csv, tsv, parquet, jsonl)
        delimiter: ";"             # CSV only; default "," (a tab for tsv)
        memory_limit_mb: 256       # a larger table streams from disk
        max_categories: 1000       # distinct training values a category column may have

A relative `path` is taken from the pipeline file's folder; a folder means every table file in
it and its sub-folders (names starting with "." or "_" are skipped), all of one format and with
the same columns. A `package:` path is found with `importlib.util.find_spec`, which locates
the package without importing it (importing may need more than its data does).

Columns are numbers or categories (text, true/false, and whole numbers listed in
`categorical`). What each column is comes from Parquet's schema, and for CSV and JSON lines from
pyarrow's reading of the file's first block (1 MiB): a CSV text column most of whose values
there are numbers is a column of numbers with a bad value, reported as such.

Everything the model sees is fitted on the training split alone and goes into
`DataSpec.normalisation` (`{"kind": "table", "target": ..., "columns": [...]}`, written into the
ONNX export's metadata), from which `plexa serve` encodes raw JSON rows the same way:

- a number is standardised by the training mean and std; a missing one (empty, NA, null, NaN)
  is imputed with the training mean, and a column that had missing values in training gets a
  0/1 feature `name:missing` beside it;
- a category is one-hot over the values seen in training plus `name:unknown`, which a value
  training never saw (in val, test or at serving) goes to; a column that had missing values in
  training has its own `name:missing` slot for them; otherwise a missing value is unknown;
- a classification target's classes are its distinct values, sorted (numbers by value; all
  rows', since the stratified split needs the labels before there is a training split); rows
  whose target is missing are left out, with a warning saying how many; a regression target is
  standardised by the training mean and std.

Streaming: when the files are larger than `memory_limit_mb` (Parquet: the uncompressed size in
its metadata; other formats: the file size), the splits are `Stream`s. The target column alone
is read whole, and split exactly as in memory (seeded, stratified; each split's rows in file
order), so both ways give the same rows; one pass in record batches then fits the statistics on
the training rows. Each split's dataset is map-style: asked for a row, it reads and encodes the
Parquet row group holding it and keeps that one decoded. It opens the group through the group's
own footer, cut once from the file's and kept in the cache (`parquet_footers`), so a reader
holds one group's metadata, not the file's (about 1 KB a column chunk: in row groups of 4096
rows, some 5% of the decoded table, in every reading process). CSV and JSON lines (and Parquet whose
row groups exceed 4096 rows) are first converted once to Parquet with row groups of 4096 rows,
kept in a `.plexa-cache` folder beside the data (`~/.cache/plexa/table` where that is not
writable) and reused while the source file is unchanged. The core shuffles training rows
uniformly, so a training epoch decodes about one row group per row (measured: ~450 rows/s per
loader worker for 10 columns, against ~200,000 rows/s in file order, as val and test read).

Bad data is a `plexa.DataError` naming the file, the line (CSV, JSON lines) or row (Parquet),
the column and what was expected. A table within `memory_limit_mb` is read whole when the
pipeline is validated, so `plexa validate` finds a bad value before anything is trained; a
larger one has its headers checked then, and its values as the first pass reads them.
"""

from __future__ import annotations

import csv as _csv
import dataclasses
import functools
import glob as _glob
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator, model_validator

from plexa import DataError
from plexa.plugins import Batch, DataPlugin, DataSpec, DataSplits, Split, Stream
from plexa.splits import SplitConfig, split
from plexa_data import parquet_footers

log = logging.getLogger(__name__)

MIN_ROWS = 10  # fewer cannot be split into train, val and test
GROUP_ROWS = 4096  # rows per row group that streaming reads (and decodes) at once
# encoded rows a reader keeps: a shuffled block of GROUP_ROWS of a split's rows with the rest
# of the split's rows in the row groups it spans, so each group is read about once an epoch
KEPT_ROWS = 2 * GROUP_ROWS
_INFER_BYTES = 1 << 20  # CSV and JSON lines: column types come from the first block
_PACKAGE = "package:"
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_WORDS = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON-lines"}
# what pyarrow reads as a number in a CSV (it trims spaces, knows inf), as a regex for text
_NUMBER = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity)\s*", re.I)
_BOOLEANS = frozenset({"1", "True", "TRUE", "true", "0", "False", "FALSE", "false"})
_FEATURES_HINT = (
    " (most of this column's values are numbers; to take it as categories list it in "
    "data.params.categorical, to leave it out list the other columns in data.params.features)"
)
_TARGET_HINT = " (a regression target; for labels use task: classification)"


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class _Files:
    where: str  # what the user named, for messages about the whole table
    paths: tuple[Path, ...]
    format: str


def _package_file(value: str) -> Path:
    package, _, inner = value.removeprefix(_PACKAGE).partition("/")
    if not package or not inner:
        raise DataError(f"data.params.path '{value}': expected package:NAME/path/of/the/file/in/it")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise DataError(
            f"no installed package '{package}' (data.params.path '{value}'); "
            f"install it: pip install {package}"
        )
    for root in found.submodule_search_locations:
        if (Path(root) / inner).is_file():
            return Path(root) / inner
    raise DataError(f"package '{package}' has no file '{inner}' (data.params.path '{value}')")


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _locate(value: str, fmt: str | None) -> _Files:
    """The files `value` names (a file, a folder, a glob, package:...) and their format."""
    if value.startswith(_PACKAGE):
        paths = [_package_file(value)]
    elif any(ch in value for ch in "*?["):
        paths = sorted(Path(p) for p in _glob.glob(value, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError(f"no files match '{value}' (data.params.path)")
    elif Path(value).is_dir():
        root = Path(value)
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not _hidden(p.relative_to(root))
            and _EXTENSIONS.get(p.suffix.lower()) in ((fmt,) if fmt else _WORDS)
        )
        if not paths:
            kind = f"{_WORDS[fmt]} " if fmt else "table "
            raise DataError(
                f"the folder '{value}' holds no {kind}files (data.params.path; by extension: "
                f"{', '.join(sorted(_EXTENSIONS))})"
            )
    else:
        path = Path(value)
        if not path.is_file():
            word = _WORDS.get(fmt or _EXTENSIONS.get(path.suffix.lower(), ""), "table")
            raise DataError(f"no such {word} file '{path}' (data.params.path)")
        paths = [path]
    if fmt is None:
        found = {_EXTENSIONS.get(p.suffix.lower()) for p in paths}
        if None in found:
            odd = next(p for p in paths if p.suffix.lower() not in _EXTENSIONS)
            raise DataError(
                f"cannot tell the format of '{odd}' from its name: set data.params.format "
                f"({', '.join(_WORDS)})"
            )
        if len(found) > 1:
            raise DataError(
                f"'{value}' holds files of several formats ({', '.join(sorted(map(str, found)))})"
                "; a table is one format: narrow data.params.path or set data.params.format"
            )
        fmt = str(found.pop())
    where = str(paths[0]) if len(paths) == 1 else f"'{value}' ({len(paths)} files)"
    return _Files(where, tuple(paths), fmt)


# --------------------------------------------------------------------------- reading


def _delimiter(fmt: str, delimiter: str | None) -> str:
    return delimiter or ("\t" if fmt == "tsv" else ",")


def _csv_options(
    fmt: str, delimiter: str | None, types: dict[str, pa.DataType], block: int, threads: bool
) -> dict[str, Any]:
    import pyarrow.csv as pcsv

    return {
        "read_options": pcsv.ReadOptions(block_size=block, use_threads=threads),
        "parse_options": pcsv.ParseOptions(delimiter=_delimiter(fmt, delimiter)),
        "convert_options": pcsv.ConvertOptions(
            column_types=types,
            include_columns=list(types),
            strings_can_be_null=True,  # an empty or NA category is missing, not the text "NA"
        ),
    }


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(the line it starts on, its values) for each non-blank record, the header first."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = _csv.reader(f, delimiter=delimiter)
        start = 1
        for values in reader:
            if values:
                yield start, values
            start = reader.line_num + 1


def _line(path: Path, fmt: str, delimiter: str | None, row: int) -> int:
    """The line data row `row` (from 0) starts on, as pyarrow counts rows (blank lines skip)."""
    if fmt == "jsonl":
        with path.open("rb") as f:
            rows = (n for n, text in enumerate(f, 1) if text.strip())
            return next(r for k, r in enumerate(rows) if k == row)
    records = _csv_records(path, _delimiter(fmt, delimiter))
    next(records)  # the header
    return next(line for k, (line, _) in enumerate(records) if k == row)


def _where(path: Path, fmt: str, delimiter: str | None, row: int) -> str:
    if fmt == "parquet":
        return f"{path}, row {row + 1}"
    return f"{path}, line {_line(path, fmt, delimiter, row)}"


def _not_utf8(path: Path) -> DataError | None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return DataError(
            f"{path} is not UTF-8 text: byte {exc.start} (line {line}) cannot be decoded "
            f"({exc.reason}); save it as UTF-8"
        )
    return None


def _csv_problem(path: Path, fmt: str, delimiter: str | None, exc: Exception) -> DataError:
    """What is wrong with a CSV that pyarrow refused, with the line (pyarrow's messages may
    lack one): not UTF-8, empty, a row of another length, a quote never closed."""
    text = str(exc)
    if "UTF8" in text or "UTF-8" in text:
        return _not_utf8(path) or DataError(f"{path}: {text}")
    if "Empty CSV file" in text:
        return DataError(f"{path} is empty: expected a header row naming the columns")
    records = _csv_records(path, _delimiter(fmt, delimiter))
    try:
        _, header = next(records)
        for line, values in records:
            if len(values) != len(header):
                return DataError(
                    f"{path}, line {line}: {len(values)} values, but the header (line 1) "
                    f"names {len(header)} columns"
                )
    except _csv.Error as problem:  # e.g. a quote that is never closed
        return DataError(f"{path}: {problem}")
    except StopIteration:
        return DataError(f"{path} is empty: expected a header row naming the columns")
    return DataError(f"{path}: cannot read it as {_WORDS[fmt]}: {text}")


def _first_block(path: Path, fmt: str, delimiter: str | None) -> tuple[pa.Schema, pa.Table]:
    """The column types pyarrow infers from the file's first block, and that block's rows."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pj

    try:
        if fmt == "jsonl":
            reader = pj.open_json(
                str(path), read_options=pj.ReadOptions(block_size=_INFER_BYTES, use_threads=False)
            )
        else:
            reader = pcsv.open_csv(
                str(path), **_csv_options(fmt, delimiter, {}, _INFER_BYTES, False)
            )
        try:
            batch = reader.read_next_batch()
            first = pa.Table.from_batches([batch])
        except StopIteration:
            first = reader.schema.empty_table()
        finally:
            reader.close()
    except pa.ArrowInvalid as exc:
        if fmt == "jsonl":
            raise _json_problem(path, {}, exc) from None
        raise _csv_problem(path, fmt, delimiter, exc) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return first.schema, first


@dataclass(frozen=True)
class _Schema:
    names: tuple[str, ...]
    types: dict[str, pa.DataType]
    numeric_text: frozenset[str]  # CSV text columns whose first block is mostly numbers


def _schema(files: _Files, delimiter: str | None) -> _Schema:
    stamps = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.paths)
    return _schema_of(stamps, files.format, delimiter)


@functools.lru_cache(maxsize=16)
def _schema_of(stamps: tuple[tuple[str, int, int], ...], fmt: str, delimiter: str | None):
    """The first file's columns and types; every other file must have the same columns."""
    first = Path(stamps[0][0])
    numeric: set[str] = set()
    if fmt == "parquet":
        schema = _parquet_schema(first)
    else:
        schema, block = _first_block(first, fmt, delimiter)
        for name, kind in zip(schema.names, schema.types, strict=True):
            if fmt != "jsonl" and pa.types.is_binary(kind):  # pyarrow's "not UTF-8"
                raise _not_utf8(first) or DataError(f"{first}, column '{name}': not UTF-8 text")
            if fmt != "jsonl" and pa.types.is_string(kind):
                values = block[name].drop_null()
                matches = pc.sum(
                    pc.match_substring_regex(values, f"^{_NUMBER.pattern}$", ignore_case=True)
                )
                if 2 * (matches.as_py() or 0) > len(values):
                    numeric.add(name)
    names = tuple(schema.names)
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{first}: the column name(s) {', '.join(twice)} appear more than once")
    for other, *_ in stamps[1:]:
        path = Path(other)
        if fmt == "parquet":
            theirs = tuple(_parquet_schema(path).names)
        elif fmt == "jsonl":
            continue  # rows may leave keys out: a key absent from a file is missing there
        else:
            theirs = tuple(next(_csv_records(path, _delimiter(fmt, delimiter)), (0, []))[1])
        if set(theirs) != set(names):
            raise DataError(
                f"{path}: its columns ({', '.join(theirs) or 'none'}) are not those of "
                f"{first} ({', '.join(names)}); the files of one table need the same columns"
            )
    return _Schema(names, dict(zip(schema.names, schema.types, strict=True)), frozenset(numeric))


def _parquet_schema(path: Path) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_boolean(kind):
        return "bool"
    return str(kind)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Plan:
    """The config checked against the files: what each column is and how it is read."""

    files: _Files
    delimiter: str | None
    target: str
    task: str
    features: tuple[str, ...]
    kinds: dict[str, str]  # feature -> "number" or "category"
    dtypes: dict[str, str]  # category -> what it came as: "string", "bool" or "integer"
    raw: dict[str, str]  # column -> its kind in the file (_kind)

    @property
    def columns(self) -> list[str]:
        return [*self.features, self.target]

    def read_types(self) -> dict[str, pa.DataType]:
        """The type each column is read as from CSV (its text) and JSON lines (its values)."""
        types = {}
        for name in self.columns:
            if name == self.target:
                number = self.task == "regression"
            else:
                number = self.kinds[name] == "number"
            if number:
                types[name] = pa.float64()
            elif self.files.format == "jsonl":
                types[name] = {"integer": pa.int64(), "bool": pa.bool_()}.get(
                    self.raw[name], pa.float64() if self.raw[name] == "number" else pa.string()
                )
            elif name != self.target and self.dtypes[name] == "bool":
                types[name] = pa.bool_()
            else:
                types[name] = pa.string()
        return types


def _plan(config: Table.Config) -> _Plan:
    files = _locate(config.path, config.format)
    schema = _schema(files, config.delimiter)
    first, names = files.paths[0], schema.names
    header = files.format in ("csv", "tsv")

    def no_such(name: str, role: str) -> DataError:
        listed = ", ".join(names)
        if header:
            return DataError(
                f"{first}, line 1, column '{name}': no such column (data.params.{role}); "
                f"the header names: {listed}"
            )
        return DataError(
            f"{first}, column '{name}': no such column (data.params.{role}); its columns: {listed}"
        )

    for role, wanted in (
        ("target", [config.target]),
        ("features", config.features or []),
        ("categorical", config.categorical),
    ):
        for name in wanted:
            if name not in names:
                raise no_such(name, role)
    features = tuple(config.features or [n for n in names if n != config.target])
    if config.target in features:
        raise DataError(f"data.params.features: the target '{config.target}' cannot be a feature")
    if len(set(features)) < len(features):
        raise DataError("data.params.features: a column is named more than once")
    if not features:
        raise DataError(f"{first}: the target '{config.target}' is its only column")
    raw = {n: _kind(schema.types[n]) for n in (*features, config.target)}
    kinds, dtypes = {}, {}
    for name in features:
        kind = raw[name]
        if name in config.categorical:
            if kind not in ("integer", "text", "bool"):
                raise DataError(
                    f"{first}, column '{name}': holds {kind} values; only whole numbers, text "
                    "and true/false can be categories (data.params.categorical)"
                )
            kinds[name], dtypes[name] = "category", "string" if kind == "text" else kind
        elif kind in ("integer", "number") or name in schema.numeric_text:
            kinds[name] = "number"
        elif kind in ("text", "bool"):
            kinds[name], dtypes[name] = "category", "string" if kind == "text" else "bool"
        else:
            raise DataError(
                f"{first}, column '{name}': holds {kind} values; a feature is a number, text or "
                "true/false (to leave it out, list the other columns in data.params.features)"
            )
    for name in config.categorical:
        if name not in features:
            raise DataError(f"data.params.categorical: '{name}' is not a feature")
    target = raw[config.target]
    task = config.task
    if task == "auto":
        task = "regression" if target in ("integer", "number") else "classification"
    if task == "regression" and target not in ("integer", "number"):
        if config.target not in schema.numeric_text:
            raise DataError(
                f"{first}, column '{config.target}': holds {target} values, but a regression "
                "target is numbers (for labels use task: classification)"
            )
    elif target not in ("integer", "number", "text", "bool"):
        raise DataError(f"{first}, column '{config.target}': holds {target} values, not labels")
    return _Plan(files, config.delimiter, config.target, task, features, kinds, dtypes, raw)


def _typed(column: Any, number: bool) -> Any:
    """Numbers as float64 (NaN is missing), anything else as text."""
    if not number:
        return pc.cast(column, pa.string())
    column = pc.cast(column, pa.float64())
    return pc.if_else(pc.is_nan(column), pa.scalar(None, pa.float64()), column)


def _prepared(table: pa.Table, plan: _Plan) -> pa.Table:
    """The plan's columns with one type each: numbers as float64, categories and a
    classification target as text."""
    columns = [_typed(table[n], plan.kinds[n] == "number") for n in plan.features]
    columns.append(_typed(table[plan.target], plan.task == "regression"))
    return pa.table(columns, names=plan.columns)


def _finite(table: pa.Table, plan: _Plan, path: Path, offset: int) -> None:
    """A number that is infinite is an error (a missing one would only show as a nan loss)."""
    for name in plan.columns:
        column = table[name]
        if pa.types.is_floating(column.type) and pc.any(pc.is_inf(column)).as_py():
            row = int(np.flatnonzero(np.isinf(column.to_numpy(zero_copy_only=False)))[0])
            value = column[row].as_py()
            where = _where(path, plan.files.format, plan.delimiter, offset + row)
            raise DataError(f"{where}, column '{name}': expected a finite number, got {value}")


def _read(path: Path, plan: _Plan) -> pa.Table:
    """One whole file, prepared."""
    return pa.concat_tables(list(_batches(path, plan, whole=True)))


def _batches(path: Path, plan: _Plan, whole: bool = False) -> Iterator[pa.Table]:
    """A file in record batches (or whole), prepared; what cannot be read is a DataError."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    fmt, types = plan.files.format, plan.read_types()
    try:
        if fmt == "parquet":
            source = pq.ParquetFile(path)
            if whole:
                yield _prepared(source.read(columns=plan.columns), plan)
                return
            for batch in source.iter_batches(batch_size=GROUP_ROWS, columns=plan.columns):
                yield _prepared(pa.Table.from_batches([batch]), plan)
            return
        if fmt == "jsonl":
            options = {
                "parse_options": pj.ParseOptions(
                    explicit_schema=pa.schema(types.items()), unexpected_field_behavior="ignore"
                )
            }
            if whole:
                table = pj.read_json(path, **options)
                yield _prepared(table.select(plan.columns), plan)
                return
            json_reader = pj.open_json(str(path), **options)
            for batch in json_reader:
                yield _prepared(pa.Table.from_batches([batch]).select(plan.columns), plan)
            return
        opts = _csv_options(fmt, plan.delimiter, types, 16 << 20, whole)
        if whole:
            table = pcsv.read_csv(path, **opts)
            yield _prepared(table, plan)
            return
        for batch in pcsv.open_csv(str(path), **opts):
            yield _prepared(pa.Table.from_batches([batch]), plan)
    except pa.ArrowInvalid as exc:
        if fmt == "parquet":
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        raise _value_problem(path, plan, exc) from None


def _value_problem(path: Path, plan: _Plan, exc: Exception) -> DataError:
    """The first value pyarrow could not read as its column's type, with its line."""
    if plan.files.format == "jsonl":
        return _json_problem(path, plan.read_types(), exc)
    import pyarrow.csv as pcsv

    if "conversion error" not in str(exc):
        return _csv_problem(path, plan.files.format, plan.delimiter, exc)
    checked = {n: t for n, t in plan.read_types().items() if t != pa.string()}
    as_text = dict.fromkeys(checked, pa.string())
    text = pcsv.read_csv(
        path, **_csv_options(plan.files.format, plan.delimiter, as_text, 1 << 20, True)
    )
    found: tuple[int, str, str] | None = None
    for name, kind in checked.items():
        values = text[name].to_pylist()
        for row, value in enumerate(values[: found[0] if found else None]):
            number = kind == pa.float64()
            if value is not None and not (
                _NUMBER.fullmatch(value) if number else value in _BOOLEANS
            ):
                found = (row, name, value)
                break
    if found is None:
        return DataError(f"{path}: {exc}")
    row, name, value = found
    where = _where(path, plan.files.format, plan.delimiter, row)
    if checked[name] != pa.float64():
        return DataError(f"{where}, column '{name}': expected true or false, got '{value}'")
    hint = _TARGET_HINT if name == plan.target else _FEATURES_HINT
    return DataError(f"{where}, column '{name}': expected a number, got '{value}'{hint}")


_JSON_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "number": ("a number", (int, float)),
    "integer": ("a whole number", (int,)),
    "bool": ("true or false", (bool,)),
    "text": ("text", (str,)),
}


def _json_kind(value: Any) -> str | None:
    """A JSON value's kind as a column's type (None: null, or not a column's value)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "text" if isinstance(value, str) else None


def _json_problem(path: Path, types: dict[str, pa.DataType], exc: Exception) -> DataError:
    """The first line of a JSON-lines file that is not an object or holds a value of the wrong
    type for its column: the type it is read as, or (while the types are being found) the type
    of the column's first value (pyarrow's messages count rows from 0 and skip blank lines)."""
    wanted = {
        n: "number" if t == pa.float64() else "integer" if t == pa.int64() else
        "bool" if t == pa.bool_() else "text"
        for n, t in types.items()
    }  # fmt: skip
    first: dict[str, int] = {}  # the line each column's kind was taken from
    try:
        with path.open(encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError:
        return _not_utf8(path) or DataError(f"{path}: not UTF-8 text")
    if not any(line.strip() for line in lines):
        return DataError(f"{path} is empty: expected one JSON object per line")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as problem:
            return DataError(
                f"{path}, line {number}: not JSON ({problem.msg}, at column {problem.colno})"
            )
        if not isinstance(row, dict):
            return DataError(f"{path}, line {number}: expected a JSON object of column: value")
        for name, value in row.items():
            if value is None or (types and name not in wanted):
                continue
            if name not in wanted:
                kind = _json_kind(value)
                if kind is None:
                    continue  # a list or an object: a column no feature can be, said later
                wanted[name], first[name] = kind, number
            what, kinds = _JSON_KINDS[wanted[name]]
            if isinstance(value, bool) is not (bool in kinds) or not isinstance(value, kinds):
                seen = f" (as on line {first[name]})" if name in first else ""
                got = json.dumps(value)[:40]
                return DataError(
                    f"{path}, line {number}, column '{name}': expected {what}{seen}, got {got}"
                )
    return DataError(f"{path}: cannot read it as JSON lines: {exc}")


# --------------------------------------------------------------------------- statistics


class _Stats:
    """Each feature's training statistics, accumulated batch by batch (streaming) or at once."""

    def __init__(self, plan: _Plan, max_categories: int) -> None:
        self.plan, self.max_categories = plan, max_categories
        self.numbers = {n: [0.0, 0.0, 0.0] for n in plan.features if plan.kinds[n] == "number"}
        self.counts: dict[str, dict[str, int]] = {n: {} for n in plan.features}
        self.missing = dict.fromkeys(plan.features, 0)

    def add(self, table: pa.Table) -> None:
        for name in self.plan.features:
            column = table[name]
            self.missing[name] += column.null_count
            if name in self.numbers:
                values = column.drop_null().to_numpy()
                if len(values):  # Chan et al.'s merge of count, mean and squared deviations
                    count, mean, m2 = self.numbers[name]
                    n, m = len(values), float(values.mean())
                    total = count + n
                    delta = m - mean
                    self.numbers[name] = [
                        total,
                        mean + delta * n / total,
                        m2 + float(((values - m) ** 2).sum()) + delta**2 * count * n / total,
                    ]
                continue
            counts = self.counts[name]
            for entry in pc.value_counts(column.drop_null()).to_pylist():
                counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
            if len(counts) > self.max_categories:
                raise DataError(
                    f"{self.plan.files.where}, column '{name}': more than {self.max_categories} "
                    "distinct values in the training rows, too many to one-hot; leave it out "
                    "(list the other columns in data.params.features) or raise "
                    "data.params.max_categories"
                )

    def spec(self) -> dict[str, Any]:
        columns: list[dict[str, Any]] = []
        for name in self.plan.features:
            missing = self.missing[name] > 0
            if name in self.numbers:
                count, mean, m2 = self.numbers[name]
                std = math.sqrt(m2 / count) if count else 0.0
                columns.append(
                    {"name": name, "type": "number", "mean": mean, "std": std if std > 0 else 1.0,
                     "missing": missing}
                )  # fmt: skip
                continue
            dtype = self.plan.dtypes[name]
            values = sorted(self.counts[name], key=_number_first if dtype == "integer" else None)
            columns.append(
                {"name": name, "type": "category", "dtype": dtype, "values": values,
                 "missing": missing}
            )  # fmt: skip
        return {"kind": "table", "target": self.plan.target, "columns": columns}


class Encoder:
    """A table's columns as the model's inputs, as `spec` (DataSpec.normalisation) says.

    The plugin's one encoder, for every split and both ways (in memory, streamed); plexa serve
    implements the same spec for JSON rows, and the tests hold the two to each other."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.names: list[str] = []
        # number columns are encoded together, as one (rows, numbers) array: their names, the
        # output column of each value and, where one exists, of its missing indicator
        self._numbers: list[str] = []
        self._value_at: list[int] = []
        self._missing_at: list[int] = []
        self._has_missing: list[int] = []
        # each category column with its first output column and its vocabulary as Arrow strings
        self._categories: list[tuple[dict[str, Any], int, pa.Array]] = []
        for column in spec["columns"]:
            name = column["name"]
            if column["type"] == "number":
                self._numbers.append(name)
                self._value_at.append(len(self.names))
                self.names.append(name)
                if column["missing"]:
                    self._has_missing.append(len(self._numbers) - 1)
                    self._missing_at.append(len(self.names))
                    self.names.append(f"{name}:missing")
                continue
            vocabulary = pa.array(column["values"], pa.string())
            self._categories.append((column, len(self.names), vocabulary))
            self.names += [f"{name}={v}" for v in column["values"]]
            self.names += [f"{name}:unknown"]
            self.names += [f"{name}:missing"] if column["missing"] else []
        numbers = [c for c in spec["columns"] if c["type"] == "number"]
        self._mean = np.array([c["mean"] for c in numbers], dtype=np.float64)
        self._std = np.array([c["std"] for c in numbers], dtype=np.float64)
        self._value_runs = _runs(self._value_at)
        self._missing_runs = _runs(self._missing_at)

    @property
    def width(self) -> int:
        return len(self.names)

    def __call__(self, table: pa.Table) -> np.ndarray:
        """Rows of `table` (any types pyarrow can cast: raw or prepared; an absent column is
        missing throughout) encoded, as float32."""
        rows = table.num_rows
        present = dict(zip(table.column_names, table.columns, strict=True))
        out = np.zeros((rows, self.width), dtype=np.float32)
        if self._numbers:
            # column by column into a column-major array (float32 files need no cast: numpy
            # widens them exactly, and a null reads as NaN), then standardised in place
            values = np.empty((rows, len(self._numbers)), dtype=np.float64, order="F")
            for j, name in enumerate(self._numbers):
                raw = present.get(name)
                if raw is None:
                    values[:, j] = np.nan
                    continue
                if not pa.types.is_floating(raw.type):
                    raw = pc.cast(raw, pa.float64())
                values[:, j] = raw.to_numpy(zero_copy_only=False)
            missing = np.isnan(values)
            values -= self._mean
            values /= self._std
            values[missing] = 0.0  # the mean, standardised
            for (first, step, count), j in self._value_runs:
                out[:, first : first + step * count : step] = values[:, j : j + count]
            missing = missing[:, self._has_missing]
            for (first, step, count), j in self._missing_runs:
                out[:, first : first + step * count : step] = missing[:, j : j + count]
        for column, at, vocabulary in self._categories:
            raw = present.get(column["name"])
            text = pc.cast(pa.nulls(rows) if raw is None else raw, pa.string())
            codes = pc.index_in(text, value_set=vocabulary)
            index = codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            unknown = len(vocabulary)
            index[index < 0] = unknown
            if column["missing"]:
                index[pc.is_null(text).to_numpy(zero_copy_only=False)] = unknown + 1
            out[np.arange(rows), at + index] = 1.0
        return out


def _runs(at: list[int]) -> list[tuple[tuple[int, int, int], int]]:
    """`at` cut into evenly spaced runs, each as ((first, step, count), its offset in `at`), so
    that a block of columns lands in the output through one strided slice, not fancy indexing."""
    runs: list[tuple[tuple[int, int, int], int]] = []
    j = 0
    while j < len(at):
        step = at[j + 1] - at[j] if j + 1 < len(at) else 1
        count = 1
        while j + count < len(at) and at[j + count] - at[j + count - 1] == step:
            count += 1
        runs.append(((at[j], step, count), j))
        j += count
    return runs


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class _Targets:
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # train, val, test: row numbers, sorted
    values: np.ndarray  # per row: class index (-1 missing) or the value (nan missing)
    class_names: tuple[str, ...] | None


def _number_first(text: str) -> tuple[bool, float | str]:
    try:
        return False, float(text)
    except ValueError:
        return True, text


def _targets(column: pa.ChunkedArray, plan: _Plan, config: Table.Config, seed: int) -> _Targets:
    """The labels, the rows that have one, and those rows split: the same in memory and
    streamed, from the target column alone."""
    where, name = plan.files.where, plan.target
    present = column.is_valid().to_numpy(zero_copy_only=False)
    names: tuple[str, ...] | None = None
    if plan.task == "classification":
        distinct = pc.unique(column.drop_null()).to_pylist()
        names = tuple(sorted(distinct, key=_number_first))
        codes = pc.index_in(column, value_set=pa.array(names, pa.string()))
        values = codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    rows = np.flatnonzero(present)
    dropped = len(present) - len(rows)
    if len(present) and not len(rows):
        raise DataError(f"{where}: every row's target '{name}' is missing")
    if dropped:
        log.warning("%s: left out %d row(s) whose target '%s' is missing", where, dropped, name)
    if len(rows) < MIN_ROWS:
        with_target = " with a target" if dropped else ""
        raise DataError(
            f"{where}: {len(rows)} data rows{with_target}; at least {MIN_ROWS} are needed to "
            "split into train, val and test"
        )
    classify = names is not None
    y = values[rows] if classify else np.zeros(len(rows))
    fractions = (config.val_fraction, config.test_fraction, config.seed_for_split(seed))
    try:
        parts = split(rows, y, *fractions, classify)
    except ValueError:  # a class too rare to be in every split
        log.warning("%s: a class of '%s' is too rare to stratify the split by", where, name)
        parts = split(rows, y, *fractions, False)
    train, val, test = (np.sort(p.x) for p in parts)
    return _Targets((train, val, test), values, names)


def _spec(plan: _Plan, encoder: Encoder, targets: _Targets, target_norm: dict) -> DataSpec:
    classify = targets.class_names is not None
    return DataSpec(
        task=plan.task,
        input_shape=(encoder.width,),
        num_classes=len(targets.class_names) if targets.class_names else None,
        class_names=targets.class_names,
        output_dim=None if classify else 1,
        feature_names=tuple(encoder.names),
        target_names=None if classify else (plan.target,),
        normalisation=encoder.spec,
        target_normalisation=target_norm,
    )


def _target_arrays(targets: _Targets) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Each split's targets: class indices, or values standardised by the training ones."""
    picked = [targets.values[rows] for rows in targets.rows]
    if targets.class_names is not None:
        return picked, {}
    mean, std = float(picked[0].mean()), float(picked[0].std())
    std = std if std > 0 else 1.0
    scaled = [((y - mean) / std).astype(np.float32).reshape(-1, 1) for y in picked]
    return scaled, {"mean": [mean], "std": [std]}


def _whole(plan: _Plan) -> pa.Table:
    """Every file read and checked, as one table."""
    tables = []
    for path in plan.files.paths:
        table = _read(path, plan)
        _finite(table, plan, path, 0)
        tables.append(table)
    return pa.concat_tables(tables)


_CHECKED: set[str] = set()  # tables read whole at validation and found fine (their stamps)


def _check(plan: _Plan, config: Table.Config) -> None:
    """At validation, a table that fits in memory is read whole, so `plexa validate` finds a
    bad value before anything is imported or trained (a larger one is checked as it streams)."""
    if _size_mb(plan.files) > config.memory_limit_mb:
        return
    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in plan.files.paths]
    key = json.dumps([stamps, plan.columns, [str(t) for t in plan.read_types().values()]])
    if key not in _CHECKED:
        _whole(plan)
        _CHECKED.add(key)


def _in_memory(plan: _Plan, config: Table.Config, seed: int) -> DataSplits:
    table = _whole(plan)
    targets = _targets(table[plan.target], plan, config, seed)
    stats = _Stats(plan, config.max_categories)
    stats.add(table.take(targets.rows[0]))
    encoder = Encoder(stats.spec())
    x = encoder(table)
    ys, target_norm = _target_arrays(targets)
    train, val, test = (Split(x[rows], y) for rows, y in zip(targets.rows, ys, strict=True))
    return DataSplits(_spec(plan, encoder, targets, target_norm), train, val, test)


# --------------------------------------------------------------------------- streaming


def _size_mb(files: _Files) -> float:
    """The table's size without reading it: Parquet's uncompressed size, else the files'."""
    import pyarrow.parquet as pq

    if files.format != "parquet":
        return sum(p.stat().st_size for p in files.paths) / 2**20
    total = 0
    for path in files.paths:
        meta = pq.ParquetFile(path).metadata
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total / 2**20


def _cache_dir(source: Path) -> Path:
    for folder in (source.parent / ".plexa-cache", _user_cache()):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise DataError(f"no writable folder for the streaming cache of {source}")


def _user_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "plexa" / "table"


def _parquet_for(path: Path, plan: _Plan) -> Path:
    """`path` itself when it is Parquet with small row groups; otherwise its conversion to
    Parquet (prepared columns, GROUP_ROWS per row group), made once and kept while the
    source is unchanged."""
    import pyarrow.parquet as pq

    if plan.files.format == "parquet":
        meta = pq.ParquetFile(path).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if max(groups, default=0) <= GROUP_ROWS:
            return path
    stat = path.stat()
    key = json.dumps(
        [str(path.resolve()), stat.st_size, stat.st_mtime_ns, plan.files.format, plan.delimiter,
         plan.columns, [str(t) for t in plan.read_types().values()], plan.task, GROUP_ROWS]
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = _cache_dir(path)
    cached = folder / f"{path.stem}-{digest}.parquet"
    if cached.exists():
        return cached
    partial = folder / f".{cached.name}.{os.getpid()}.partial"
    writer = None
    try:
        for batch in _batches(path, plan):  # checked as it is read, in _streamed
            if writer is None:
                writer = pq.ParquetWriter(partial, batch.schema)
            writer.write_table(batch, row_group_size=GROUP_ROWS)
        if writer is None:
            pq.write_table(_read(path, plan), partial)
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    for stale in folder.glob(f"{path.stem}-*.parquet"):  # of an earlier version of the file
        if stale != cached:  # (another process may have just made this one: it is the same)
            stale.unlink(missing_ok=True)
    os.replace(partial, cached)
    return cached


def _footers_for(path: Path) -> tuple[str, np.ndarray]:
    """The file's footer cut into one footer per row group (`parquet_footers`), written once
    into the streaming cache and kept while the file is unchanged; the sidecar's path and each
    group's (offset, length) in it. A reader then parses only the group it reads, where the
    whole file's parsed footer (about 1 KB a column chunk) would grow with the table."""
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, "footers-1"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = _cache_dir(path)
    sidecar = folder / f"{path.name}.{digest}.footers"
    if not sidecar.exists():
        try:
            tails = parquet_footers.row_group_footers(parquet_footers.file_footer(path))
        except parquet_footers.FooterError as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        ends = np.cumsum([len(t) for t in tails], dtype=np.int64)
        partial = folder / f".{sidecar.name}.{os.getpid()}.partial"
        with open(partial, "wb") as f:  # the tails, then their ends and how many there are
            f.write(b"".join(tails))
            f.write(ends.tobytes() + np.int64(len(tails)).tobytes())
        for stale in folder.glob(f"{path.name}.*.footers"):  # of an earlier version of the file
            stale.unlink(missing_ok=True)
        os.replace(partial, sidecar)
    with open(sidecar, "rb") as f:
        f.seek(-8, 2)
        count = int(np.frombuffer(f.read(8), dtype=np.int64)[0])
        f.seek(-8 * (count + 1), 2)
        ends = np.frombuffer(f.read(8 * count), dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return str(sidecar), np.stack([starts, ends - starts], axis=1)


class TableRows:
    """One split's rows of Parquet files, read a row group at a time and encoded when asked.

    Map-style (the core shuffles and shards it by index). Picklable for loader workers: files
    are opened by the process that reads them, each row group through its own footer (from the
    sidecar `_footers_for` wrote), so a reader holds one group's metadata at a time. Each row
    group read is encoded and kept, the last few groups' worth (training shuffles blocks of the
    split's neighbouring rows, val and test read in file order, so one read serves many rows);
    a split with at most half a group's rows (val, test) encodes and keeps only its own."""

    def __init__(
        self,
        files: list[str],
        sidecars: list[str],  # each file's row-group footers
        group_files: np.ndarray,  # the file of each row group, in row order
        spans: np.ndarray,  # each row group's footer: (offset, length) in its file's sidecar
        starts: np.ndarray,  # the first row of each row group
        rows: np.ndarray,  # the split's rows (row numbers over all files), sorted
        labels: np.ndarray,
        spec: dict[str, Any],
        columns: list[str],
    ) -> None:
        self.files, self.sidecars, self.group_files = files, sidecars, group_files
        self.spans, self.starts = spans, starts
        self.rows, self.labels, self.spec, self.columns = rows, labels, spec, columns
        # the split's first sample in each row group (and one past the last)
        self.firsts = np.searchsorted(rows, np.append(starts, np.iinfo(np.int64).max))
        self._sidecars: dict[int, Any] = {}  # file -> its sidecar, open
        # row group -> its rows encoded, and where this split's rows are in them (None: all
        # and only them, in order); least recently used first
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._encoder: Encoder | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        """A batch's rows at once (PyTorch's batched fetch): each row group it touches is
        decoded once and its rows taken by one index operation, not one call per row."""
        picked = np.asarray(indices, dtype=np.int64)
        groups = np.searchsorted(self.firsts, picked, side="right") - 1
        parts = [
            self._rows(int(g), picked[groups == g] - self.firsts[g]) for g in np.unique(groups)
        ]
        if not parts:
            x = np.empty((0, Encoder(self.spec).width), dtype=np.float32)
        elif len(parts) == 1:  # the usual case: a shuffled block lies in one row group
            x = parts[0]
        else:  # the parts hold the rows sorted by row group: put them back in the asked order
            x = np.empty((len(picked), parts[0].shape[1]), dtype=parts[0].dtype)
            x[np.argsort(groups, kind="stable")] = np.concatenate(parts)
        return Batch(x, self.labels[picked])

    def _rows(self, group: int, local: np.ndarray) -> np.ndarray:
        """The encoded rows of the split's `local` samples in `group`."""
        decoded = self._decoded.pop(group, None)
        if decoded is None:
            decoded = self._read(group)
            kept = sum(len(x) for x, _ in self._decoded.values()) + len(decoded[0])
            while self._decoded and kept > KEPT_ROWS:  # the least recently used go first
                kept -= len(self._decoded.pop(next(iter(self._decoded)))[0])
        self._decoded[group] = decoded
        x, at = decoded
        return x[local if at is None else at[local]]

    def _read(self, group: int) -> tuple[np.ndarray, np.ndarray | None]:
        file = int(self.group_files[group])
        if file not in self._sidecars:
            self._sidecars[file] = open(self.sidecars[file], "rb")  # noqa: SIM115 (kept)
        if self._encoder is None:
            self._encoder = Encoder(self.spec)
        offset, length = (int(v) for v in self.spans[group])
        tail = os.pread(self._sidecars[file].fileno(), length, offset)
        reader = parquet_footers.open_row_group(self.files[file], tail)
        # one thread: the loader's workers are the parallelism (and each thread a reader
        # starts keeps an allocator heap of its own)
        table = reader.read_row_group(0, columns=self.columns, use_threads=False)
        mine = self.rows[self.firsts[group] : self.firsts[group + 1]] - self.starts[group]
        if len(mine) == table.num_rows:
            return self._encoder(table), None
        if 2 * len(mine) > table.num_rows:  # training's share: cheaper to encode the few others
            return self._encoder(table), mine  # than to copy the table without them
        return self._encoder(table.take(mine)), None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sidecars": {}, "_decoded": {}, "_encoder": None}


def _streamed(plan: _Plan, config: Table.Config, seed: int) -> DataSplits:
    import pyarrow.parquet as pq

    parquet = [_parquet_for(path, plan) for path in plan.files.paths]
    footers = [_footers_for(path) for path in parquet]
    group_files, sizes = [], []
    regression = plan.task == "regression"
    targets_read = []
    for k, path in enumerate(parquet):  # one file's parsed footer in memory at a time
        reader = pq.ParquetFile(path, pre_buffer=False)
        meta = reader.metadata
        group_files += [k] * meta.num_row_groups
        sizes += [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        targets_read.append(_typed(reader.read(columns=[plan.target])[plan.target], regression))
        del reader, meta
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    column = pa.chunked_array(targets_read)
    targets = _targets(column, plan, config, seed)
    train = np.zeros(len(column), dtype=bool)
    train[targets.rows[0]] = True
    stats = _Stats(plan, config.max_categories)
    offset = 0
    for source, path in zip(plan.files.paths, parquet, strict=True):
        reader = pq.ParquetFile(path, pre_buffer=False)
        start = offset
        for g in range(reader.metadata.num_row_groups):  # one row group in memory at a time
            table = _prepared(reader.read_row_group(g, columns=plan.columns), plan)
            _finite(table, plan, source, offset - start)
            stats.add(table.filter(pa.array(train[offset : offset + table.num_rows])))
            offset += table.num_rows
        del reader
    pa.default_memory_pool().release_unused()  # what reading every row group left cached
    encoder = Encoder(stats.spec())
    ys, target_norm = _target_arrays(targets)
    streams = [
        Stream(
            TableRows(
                [str(p) for p in parquet],
                [sidecar for sidecar, _ in footers],
                np.asarray(group_files, dtype=np.int64),
                np.concatenate([spans for _, spans in footers]),
                starts,
                rows,
                y,
                encoder.spec,
                list(plan.features),
            ),
            y,
            block=GROUP_ROWS,  # a row group's rows are decoded together
        )  # fmt: skip
        for rows, y in zip(targets.rows, ys, strict=True)
    ]
    return DataSplits(_spec(plan, encoder, targets, target_norm), *streams)


# --------------------------------------------------------------------------- the plugin


class Table(DataPlugin):
    class Config(SplitConfig):
        path: str = Field(
            description="A file, a folder (every table file in it, one format, the same "
            "columns) or a glob, relative to the pipeline's folder; or `package:NAME/FILE`, a "
            "file in an installed package."
        )
        target: str = Field(description="The column predicted.")
        task: Literal["auto", "classification", "regression"] = Field(
            "auto",
            description="auto: a text or true/false target is a classification, numbers a "
            "regression (set it for whole-number class codes).",
        )
        features: list[str] | None = Field(
            None, description="The input columns; default: every column but the target."
        )
        categorical: list[str] = Field(
            default_factory=list,
            description="Whole-number columns to read as categories (text and true/false ones "
            "always are).",
        )
        format: Literal["csv", "tsv", "parquet", "jsonl"] | None = Field(
            None, description="The files' format; default: from the extension."
        )
        delimiter: str | None = Field(
            None, description='CSV only: one character; default "," (a tab for tsv).'
        )
        memory_limit_mb: float = Field(
            256,
            gt=0,
            description="Tables larger than this (Parquet: uncompressed) stream from disk "
            "instead of being held in memory.",
        )
        max_categories: int = Field(
            1000, ge=1, description="The most distinct training values a category column may have."
        )

        @field_validator("path")
        @classmethod
        def _absolute(cls, value: str, info: ValidationInfo) -> str:
            if value.startswith(_PACKAGE):
                return value  # the same on every machine with the package; found when used
            base = Path((info.context or {}).get("base_dir", Path.cwd()))
            return os.path.abspath(base / Path(value).expanduser())

        @field_validator("delimiter")
        @classmethod
        def _one_character(cls, value: str | None) -> str | None:
            if value is not None and len(value) != 1:
                raise ValueError("a delimiter is one character")
            return value

        @model_validator(mode="after")
        def _usable(self) -> Table.Config:
            _check(_plan(self), self)  # the files exist, have the columns named, and read
            return self

    def task(self, config: Config) -> str:
        return _plan(config).task

    def load(self, config: Config, seed: int) -> DataSplits:
        plan = _plan(config)  # again: the files may have changed since validation
        load = _streamed if _size_mb(plan.files) > config.memory_limit_mb else _in_memory
        return dataclasses.replace(load(plan, config, seed), source=config.path)
