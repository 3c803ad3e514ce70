"""Reading a streamed table in a shuffled order: the blocked shuffle (`Stream.block`, whole
row groups in a seeded order, rows shuffled within each) against a shuffle over the whole
split, one reader, the `table` plugin's streamed training split of a generated Parquet folder.

    .venv/bin/python benchmarks/table_shuffle.py [--rows 200000] [--whole-rows 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data import generate
from torch.utils.data import DataLoader

from plexa.plugins import Stream
from plexa.streaming import EpochOrder, _collate
from plexa_data.table import Table


def rows_per_second(stream: Stream, block: int | None, limit: int | None) -> float:
    order = EpochOrder(len(stream.dataset), shuffle=True, seed=0, epoch=lambda: 0, rank=0,
                       world_size=1, block=block, limit=limit)  # fmt: skip
    loader = DataLoader(stream.dataset, batch_size=1024, sampler=order, collate_fn=_collate)
    started, rows = time.perf_counter(), 0
    for _, y in loader:
        rows += len(y)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--whole-rows", type=int, default=5_000, help="rows read unblocked")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="plexa-shuffle-")) / "table"
    generate(folder, args.rows, files=2)
    config = Table.Config(path=str(folder), target="label", memory_limit_mb=1)
    train = Table().load(config, 0).train
    assert isinstance(train, Stream)
    blocked = rows_per_second(train, train.block, None)
    whole = rows_per_second(train, None, args.whole_rows)
    print(f"{len(train):,} training rows, block {train.block}")
    print(f"blocked shuffle: {blocked:,.0f} rows/s; whole-split shuffle: {whole:,.0f} rows/s; "
          f"ratio {blocked / whole:,.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
