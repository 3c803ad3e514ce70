"""Streaming data at scale: a Parquet table several times larger than a memory cap, trained one
epoch by plexa's `table` plugin (local runner, then Ray runner) and by a hand-written PyTorch
loop that reads the same files with pyarrow through a DataLoader with the same workers.

Each contender runs as its own process inside a cgroup (v1) memory limit: a run that loads the
table instead of streaming it is killed by the kernel, and the cgroup's peak usage (page cache
included) and the processes' peak resident memory are reported beside the samples per second.
The same MLP (inputs -> 64 -> classes), batch size and AdamW settings for all; the hand-written
loop standardises and one-hot encodes with statistics computed the same way (training rows).
Contenders are interleaved (a, b, c, a, b, c, ...) over the repeats; figures are medians.
The images and BPE parts live in `data_images.py` and `data_text.py` beside this file.

    sudo .venv/bin/python benchmarks/data.py [--rows 2700000] [--features 512] [--cap-mb 1792]
        [--workers 2] [--repeats 3] [--contenders "plexa local,hand-written,plexa ray"]
        [--table DIR] [--out benchmarks/results/data.md]

The defaults make a table of 7.2 GB decoded, 4x the 1792 MB cap (a cap that leaves page cache
room beside two loader workers: at 1536 MB even the hand-written loop's processes hold 1.3 GB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup/memory/plexa-bench-data")
CATEGORIES, CLASSES = ("colour", "shape"), 4
BATCH = 1024
HELD_OUT = 0.01  # plexa's validation and test shares: it trains on 98% of the rows, the loop all


def generate(folder: Path, rows: int, features: int, files: int = 8) -> int:
    """A folder of Parquet files: float features with some nulls, two string columns and a
    4-class target that depends on both; written in row groups of about 8 MB of floats, never
    whole in memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(features, CLASSES)) / np.sqrt(features / 24)
    colours = np.array(["red", "green", "blue", "amber", "violet", "grey", "teal", "rose"])
    shapes = np.array(["disc", "square", "star", "ring"])
    per_file = -(-rows // files)
    group = min(65_536, 2**21 // features)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with pq.ParquetWriter(folder / f"part-{f:03d}.parquet", _schema(features)) as writer:
            left = min(per_file, rows - f * per_file)
            while left > 0:
                n = min(group, left)
                left -= n
                x = rng.normal(size=(n, features)).astype(np.float32)
                c, s = rng.integers(0, len(colours), n), rng.integers(0, len(shapes), n)
                logits = x @ weights + np.eye(CLASSES)[c % CLASSES] * 2 + np.eye(CLASSES)[s] * 1
                y = logits.argmax(1)
                columns = {f"f{i}": pa.array(x[:, i], mask=rng.random(n) < 0.02)
                           for i in range(features)}  # fmt: skip
                columns["colour"] = pa.array(colours[c])
                columns["shape"] = pa.array(shapes[s], mask=rng.random(n) < 0.01)
                columns["label"] = pa.array(np.array(["a", "b", "c", "d"])[y])
                writer.write_table(pa.table(columns, schema=_schema(features)))
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


def _schema(features: int):
    import pyarrow as pa

    fields = [pa.field(f"f{i}", pa.float32()) for i in range(features)]
    fields += [pa.field(c, pa.string()) for c in CATEGORIES]
    return pa.schema([*fields, pa.field("label", pa.string())])


def _shape(folder: Path) -> tuple[int, int]:
    """The table's rows and float columns, from the files' metadata."""
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    return rows, len(pq.read_schema(files[0]).names) - len(CATEGORIES) - 1


def in_memory_bytes(folder: Path) -> int:
    """What the table takes decoded in Arrow, from the files' metadata alone."""
    import pyarrow.parquet as pq

    total = 0
    for path in folder.glob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        total += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    return total


# ------------------------------------------------------------------ contenders (subprocesses)


def plexa_epoch(folder: str, workers: int, runner: str, limit_mb: int) -> dict[str, float]:
    """One epoch of the `table` plugin on the folder, streamed (`limit_mb`: its memory_limit_mb,
    what each of its processes may hold of the table)."""
    from plexa import orchestrator
    from plexa.config import validate

    spec = validate({
        "name": "table-bench",
        "data": {"plugin": "table", "params": {
            "path": folder, "target": "label", "memory_limit_mb": limit_mb,
            "val_fraction": HELD_OUT, "test_fraction": HELD_OUT},
            "loader": {"workers": workers}},
        "model": {"plugin": "mlp", "params": {"hidden": [64]}},
        "train": {"max_epochs": 1, "batch_size": BATCH, "eval_batch_size": 8192},
        "compute": {"runner": runner, "workers": 1, "cpus_per_worker": 1, "accelerator": "cpu"},
        "export": {"onnx": False},
    })  # fmt: skip
    result = orchestrator.run(spec)
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(result.run_id, "samples_per_second")
    return {"samples_per_second": history[-1].value, "test_acc": result.metrics["test/acc"]}


def hand_epoch(folder: str, workers: int) -> dict[str, float]:
    """What a user writes by hand: pyarrow row groups in an IterableDataset, the statistics
    from a first pass, a DataLoader with the same workers, a plain training loop."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    files = sorted(Path(folder).glob("*.parquet"))
    groups = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    names = [n for n in pq.read_schema(files[0]).names if n not in (*CATEGORIES, "label")]
    total = np.zeros(len(names))
    squares = np.zeros(len(names))
    counts = np.zeros(len(names))
    vocab: dict[str, set] = {c: set() for c in CATEGORIES}
    for path, g in groups:
        table = pq.ParquetFile(path).read_row_group(g)
        x = np.stack([table[n].to_numpy(zero_copy_only=False) for n in names], 1)
        seen = ~np.isnan(x)
        total += np.nansum(x, 0)
        squares += np.nansum(x**2, 0)
        counts += seen.sum(0)
        for c in CATEGORIES:
            vocab[c] |= set(table[c].drop_null().unique().to_pylist())
    mean = total / counts
    std = np.sqrt(squares / counts - mean**2)
    index = {c: {v: i for i, v in enumerate(sorted(vocab[c]))} for c in CATEGORIES}
    classes = {"a": 0, "b": 1, "c": 2, "d": 3}
    width = 2 * len(names) + sum(len(v) + 1 for v in index.values())

    class Rows(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            mine = groups[info.id :: info.num_workers] if info else groups
            for path, g in mine:
                table = pq.ParquetFile(path).read_row_group(g)
                x = np.stack([table[n].to_numpy(zero_copy_only=False) for n in names], 1)
                missing = np.isnan(x)
                x = np.where(missing, 0.0, (x - mean) / std)
                parts = [x, missing]
                for c in CATEGORIES:
                    codes = [index[c].get(v, len(index[c])) if v is not None else len(index[c])
                             for v in table[c].to_pylist()]  # fmt: skip
                    parts.append(np.eye(len(index[c]) + 1)[codes])
                features = np.concatenate(parts, 1).astype(np.float32)
                labels = np.array([classes[v] for v in table["label"].to_pylist()])
                for row in range(len(labels)):
                    yield features[row], labels[row]

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = DataLoader(Rows(), batch_size=BATCH, num_workers=workers)
    seen_rows, start = 0, time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        seen_rows += len(y)
    return {"samples_per_second": seen_rows / (time.perf_counter() - start)}


# ------------------------------------------------------------------ the harness


def _cgroup(cap_mb: int) -> None:
    CGROUP.mkdir(exist_ok=True)
    limit = cap_mb * 2**20
    knobs = [CGROUP / "memory.limit_in_bytes"]
    swap = CGROUP / "memory.memsw.limit_in_bytes"  # no swapping around the cap, where it exists
    knobs += [swap] if swap.exists() else []
    # memory + swap may never be set below memory alone: raised first, lowered last
    raising = limit > int(knobs[0].read_text())
    for knob in reversed(knobs) if raising else knobs:
        knob.write_text(str(limit))


def _contender(
    kind: str, folder: Path, workers: int, cap_mb: int, limit_mb: int, scratch: Path
) -> dict:
    """Run one contender in its own process inside the cgroup; its figures and peak memory."""
    (CGROUP / "memory.max_usage_in_bytes").write_text("0")
    out = scratch / f"{kind}-{time.monotonic_ns()}.json"
    call = (
        f"hand_epoch({str(folder)!r}, {workers})"
        if kind == "hand-written"
        else f"plexa_epoch({str(folder)!r}, {workers}, {kind.split()[-1]!r}, {limit_mb})"
    )
    code = (
        f"import json, sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; "
        f"from data import hand_epoch, plexa_epoch; json.dump({call}, open({str(out)!r}, 'w'))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db",
           "PLEXA_RUNS_DIR": str(scratch / "runs")}  # fmt: skip
    started = time.perf_counter()

    def enter_cgroup() -> None:  # in the child, before it runs anything
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=scratch,
                            preexec_fn=enter_cgroup)  # fmt: skip
    resident = 0  # the cgroup's anonymous and shared memory, which (unlike page cache) the
    while proc.poll() is None:  # kernel cannot drop: sampled, as v1 keeps no peak of it
        resident = max(resident, _resident_mb())
        time.sleep(0.25)
    code_ = proc.returncode
    wall = time.perf_counter() - started
    peak = int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 2**20
    killed = int((CGROUP / "memory.failcnt").read_text())
    figures = json.loads(out.read_text()) if code_ == 0 and out.exists() else {}
    return {**figures, "rc": code_, "peak_mb": peak, "resident_mb": resident, "wall_s": wall,
            "limit_hits": killed}  # fmt: skip


def _resident_mb() -> float:
    stat = dict(line.split() for line in (CGROUP / "memory.stat").read_text().splitlines())
    return (int(stat["total_rss"]) + int(stat["total_shmem"])) / 2**20


CONTENDERS = "plexa local,hand-written,plexa ray"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_700_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--cap-mb", type=int, default=1792)
    parser.add_argument(
        "--memory-limit-mb", type=int, help="the table plugin's memory_limit_mb (default: cap / 8)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--contenders",
        default=CONTENDERS,
        help="comma-separated, from the default list",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data.md")
    parser.add_argument(
        "--table",
        type=Path,
        help="keep the generated table here (reused if "
        "it exists) instead of in the scratch folder, removed at the end",
    )
    args = parser.parse_args()

    begun = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="plexa-bench-data-"))
    folder = args.table or scratch / "table"
    if not any(folder.glob("*.parquet")):
        generate(folder, args.rows, args.features)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    args.rows, args.features = _shape(folder)  # what the table holds, when it is reused
    decoded = in_memory_bytes(folder)
    _cgroup(args.cap_mb)
    kinds = args.contenders.split(",")
    limit_mb = args.memory_limit_mb or max(args.cap_mb // 8, 1)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            runs[kind].append(
                _contender(kind, folder, args.workers, args.cap_mb, limit_mb, scratch)
            )
            print(kind, runs[kind][-1], flush=True)

    def median(kind: str, key: str) -> float:
        values = [r[key] for r in runs[kind] if key in r]
        return statistics.median(values) if values else float("nan")

    lines = [
        "# Streaming a table larger than memory",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python benchmarks/data.py --rows {args.rows} --features {args.features} "
        f"--cap-mb {args.cap_mb} "
        + (f"--memory-limit-mb {limit_mb} " if args.memory_limit_mb else "")
        + f"--workers {args.workers} --repeats {args.repeats}"
        + (f' --contenders "{args.contenders}"' if args.contenders != CONTENDERS else "")
        + "`",
        f"- machine cores: {os.cpu_count()}",
        f"- table: {args.rows:,} rows, {args.features} float columns with nulls, 2 string columns, "
        f"a string target; {on_disk / 2**20:,.0f} MB of Parquet, "
        f"{decoded / 2**20:,.0f} MB decoded ({decoded / (args.cap_mb * 2**20):.1f}x the cap)",
        f"- memory cap (cgroup v1 memory.limit_in_bytes): {args.cap_mb} MB, for each contender's "
        "whole process tree",
        f"- loader workers: {args.workers}; batch size {BATCH}; one epoch; the table plugin's "
        f"memory_limit_mb {limit_mb}",
        f"- plexa holds out {HELD_OUT:.0%} of the rows for validation and {HELD_OUT:.0%} for "
        "testing, the hand-written loop trains on every row; samples/s is training samples over "
        "the training time, loader workers' start included (plexa's `samples_per_second`, from "
        "the epoch's start to its last training batch: not its validation pass; neither "
        "includes the process's start-up or the statistics pass)",
        "",
        "| contender | samples/s (median) | ratio to hand-written | peak resident MB "
        "(anonymous + shared) | peak cgroup MB (page cache included) | exit codes |",
        "|---|---|---|---|---|---|",
    ]
    base = median("hand-written", "samples_per_second") if "hand-written" in runs else math.nan
    for kind in kinds:
        rate = median(kind, "samples_per_second")
        codes = ",".join(str(r["rc"]) for r in runs[kind])
        versus = "—" if math.isnan(base) else f"{rate / base:.2f}x"
        lines.append(
            f"| {kind} | {rate:,.0f} | {versus} | {median(kind, 'resident_mb'):,.0f} | "
            f"{median(kind, 'peak_mb'):,.0f} | {codes} |"
        )
    if "plexa ray" in runs and "plexa local" in runs:
        local = median("plexa local", "samples_per_second")
        ratio = median("plexa ray", "samples_per_second") / local
        lines += ["", f"Ray / local at the same cores: {ratio:.2f}x"]
    lines += ["", f"benchmark wall time: {time.perf_counter() - begun:,.0f} s", ""]
    args.out.write_text("\n".join(lines))
    shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
