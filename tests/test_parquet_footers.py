"""Row-group footers cut from a Parquet file's footer (`plexa_data.parquet_footers`), checked
against pyarrow's own reading of real files written with different options, and the `table`
plugin's streaming reads through them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plexa import DataError
from plexa_data import parquet_footers
from plexa_data.table import Table


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(n)
    return pa.table(
        {
            "x": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1),
            "k": pa.array(rng.integers(-(2**40), 2**40, n)),
            "word": pa.array(rng.choice(["ant", "bee", "cat", "dog"], n), mask=rng.random(n) < 0.2),
            "flag": pa.array(rng.random(n) < 0.5),
            "items": pa.array([list(range(i % 4)) for i in range(n)]),
            "point": pa.array([{"a": i, "b": str(i)} for i in range(n)]),
            "label": pa.array(rng.choice(["yes", "no"], n)),
        }
    ).replace_schema_metadata({"written by": "test_parquet_footers"})


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"write_statistics": False, "use_dictionary": False, "compression": "zstd"},
        {"write_page_index": True, "data_page_version": "2.0", "store_schema": False},
    ],
    ids=["defaults", "plain", "page-index-v2"],
)
def test_each_row_groups_footer_reads_what_the_whole_footer_reads(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(_table(1000), path, row_group_size=137, **options)  # 8 groups, the last short
    whole = pq.ParquetFile(path)
    tails = parquet_footers.row_group_footers(parquet_footers.file_footer(path))
    assert len(tails) == whole.metadata.num_row_groups == 8
    for g, tail in enumerate(tails):
        one = parquet_footers.open_row_group(path, tail)
        assert one.metadata.num_row_groups == 1
        assert one.metadata.num_rows == whole.metadata.row_group(g).num_rows
        assert one.metadata.row_group(0).to_dict() == whole.metadata.row_group(g).to_dict()
        assert one.schema_arrow == whole.schema_arrow  # key-value metadata kept
        assert one.read_row_group(0).equals(whole.read_row_group(g))
        assert one.read_row_group(0, columns=["word", "x"]).equals(
            whole.read_row_group(g, columns=["word", "x"])
        )


def test_what_is_not_a_plain_parquet_footer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(_table(50), path)
    data = path.read_bytes()
    (tmp_path / "short").write_bytes(b"PAR1")
    (tmp_path / "not").write_bytes(data[:-4] + b"PARE")  # an encrypted footer's magic
    for name in ("short", "not"):
        with pytest.raises(parquet_footers.FooterError):
            parquet_footers.file_footer(tmp_path / name)
    footer = parquet_footers.file_footer(path)
    with pytest.raises(parquet_footers.FooterError, match="middle of a value"):
        parquet_footers.row_group_footers(footer[: len(footer) // 2])
    # through the plugin: the file named, exit 2's error type
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.parquet").write_bytes(data[:-4] + b"PARE")
    with pytest.raises(DataError, match="t.parquet"):
        Table().load(
            Table.Config(path=str(tmp_path / "data"), target="label", memory_limit_mb=1e-6), seed=0
        )


def _streamed_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = Table().load(Table.Config(path=str(path), target="label", memory_limit_mb=1e-6), seed=0)
    rows = data.train.dataset
    batch = rows.__getitems__(list(range(len(rows))))
    return batch.x, batch.y


def test_a_rewritten_file_gets_new_row_group_footers(tmp_path: Path) -> None:
    """The footers are cached beside the data and keyed by the file's size and time: a file
    written again with other row groups is read through its new ones, never the old offsets."""
    path = tmp_path / "t.parquet"
    table = _table(600).select(["x", "k", "word", "flag", "label"])
    pq.write_table(table, path, row_group_size=100)
    first = _streamed_rows(path)
    sidecars = list((tmp_path / ".plexa-cache").glob("t.parquet.*.footers"))
    assert len(sidecars) == 1
    pq.write_table(table.slice(0, 500), path, row_group_size=64, compression="zstd")
    os.utime(path, ns=(1, 1))  # a different time even where the clock is coarse
    second = _streamed_rows(path)
    assert list((tmp_path / ".plexa-cache").glob("t.parquet.*.footers")) != sidecars
    assert len(list((tmp_path / ".plexa-cache").glob("t.parquet.*.footers"))) == 1
    in_memory = Table().load(Table.Config(path=str(path), target="label"), seed=0).train
    np.testing.assert_allclose(second[0], in_memory.x, rtol=0, atol=1e-6)
    assert second[1].tolist() == in_memory.y.tolist()
    assert len(second[1]) < len(first[1])
