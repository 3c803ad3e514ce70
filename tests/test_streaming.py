"""Streaming splits: each rank's and worker's share, federated parts from labels alone, and a
run interrupted mid-epoch that resumes with exactly the batches it had not trained on."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from plexa import orchestrator
from plexa.config import load_pipeline
from plexa.plugins import DataPlugin, DataSplits, PluginConfig, Stream, data
from plexa.runners import RunInterrupted
from plexa.streaming import EpochOrder, IterableShard, subset

from .conftest import PIPELINES


class Rows(Dataset):
    """Rows of a .npy file on disk, read one at a time through a memory map (64 pixels, label)."""

    def __init__(self, path: Path, rows: np.ndarray) -> None:
        self.path, self.rows = path, rows
        self.reads: list[int] = []
        self._table: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        if self._table is None:  # opened in each loader worker
            self._table = np.load(self.path, mmap_mode="r")
        self.reads.append(int(self.rows[i]))
        row = self._table[self.rows[i]]
        return np.asarray(row[:64], dtype=np.float32), np.int64(row[64])


@data("disk-digits", override=True)
class DiskDigits(DataPlugin):
    """The digits written to one file, then streamed from it."""

    class Config(PluginConfig):
        folder: str

    def task(self, config: Config) -> str:
        return "classification"

    def load(self, config: Config, seed: int) -> DataSplits:
        from plexa_data.digits import Digits

        memory = Digits().load(Digits.Config(flatten=True), seed)
        splits = (memory.train, memory.val, memory.test)
        table = np.concatenate([np.concatenate([s.x, s.y[:, None]], 1) for s in splits])
        path = Path(config.folder) / "digits.npy"
        np.save(path, table.astype(np.float32))
        ends = np.cumsum([len(s) for s in splits])
        parts = np.split(np.arange(len(table)), ends[:2])
        streams = [Stream(Rows(path, rows), table[rows, 64].astype(np.int64)) for rows in parts]
        return DataSplits(memory.spec, *streams)


class Trained(L.Callback):
    """Records each trained batch (epoch, index, a fingerprint); interrupts at `stop`."""

    def __init__(self, stop: tuple[int, int] | None = None) -> None:
        self.stop, self.batches = stop, []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        if self.stop == (trainer.current_epoch, idx):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-epoch

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        x, y = batch
        self.batches.append((trainer.current_epoch, idx, float(x.sum()), y.tolist()))


def test_a_streaming_run_interrupted_mid_epoch_resumes_with_exactly_the_unseen_batches(
    workdir: Path,
) -> None:
    spec = load_pipeline(
        PIPELINES / "digits-mlp.yaml",
        [
            "compute.accelerator=cpu",
            "data.plugin=disk-digits",
            f"data.params={{folder: {workdir}}}",
            "data.loader.workers=2",  # the position must survive worker processes too
            "train.max_epochs=3",
            "model.params.dropout=0.3",  # and dropout's random masks
            "export.onnx=false",
        ],
    )
    straight = Trained()
    uninterrupted = orchestrator.run(spec, callbacks=[straight])

    first = Trained(stop=(1, 5))
    with pytest.raises(RunInterrupted) as stopped:
        orchestrator.run(spec, callbacks=[first])
    assert [b[:2] for b in first.batches[-2:]] == [(1, 3), (1, 4)]
    rest = Trained()
    resumed = orchestrator.run(spec, resume=stopped.value.run_id, callbacks=[rest])

    assert rest.batches[0][:2] == (1, 5)
    assert first.batches + rest.batches == straight.batches  # none repeated, none skipped
    assert resumed.metrics == uninterrupted.metrics


class Workers(L.Callback):
    """The loader worker processes alive while training batches, and while validating."""

    def __init__(self) -> None:
        self.training: set[int] = set()
        self.validating: set[int] = set()

    def on_train_batch_end(self, *args: Any) -> None:
        self.training |= {p.pid for p in multiprocessing.active_children()}

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.validating |= {p.pid for p in multiprocessing.active_children()}


def test_the_training_loader_workers_exit_before_the_epoch_end_validation(workdir: Path) -> None:
    """Lightning validates right after an epoch's last batch, before it would ask the loader
    for more; the workers of a plain DataLoader would still be alive, holding their memory."""
    spec = load_pipeline(
        PIPELINES / "digits-mlp.yaml",
        ["compute.accelerator=cpu", "data.plugin=disk-digits", f"data.params={{folder: {workdir}}}",
         "data.loader.workers=2", "train.max_epochs=2", "export.onnx=false"],
    )  # fmt: skip
    seen = Workers()
    orchestrator.run(spec, callbacks=[seen])
    assert len(seen.training) == 4  # two workers an epoch
    assert seen.validating and not seen.validating & seen.training


def order(epoch: int, rank: int = 0, world: int = 1, **kw: Any) -> list[int]:
    sampler = EpochOrder(
        100, shuffle=True, seed=7, epoch=lambda: epoch, rank=rank, world_size=world, **kw
    )
    return list(sampler)


def test_each_rank_gets_an_equal_disjoint_share_of_a_seeded_epoch() -> None:
    for world in (1, 2, 3):
        shares = [order(4, rank, world) for rank in range(world)]
        everyone = [i for share in shares for i in share]
        assert len({len(s) for s in shares}) == 1  # ranks step in lockstep
        assert len(set(everyone)) == len(everyone) == 100 - 100 % world
    assert order(4) == order(4) and sorted(order(4)) == sorted(order(5)) != order(5)
    resumed = EpochOrder(
        100, shuffle=True, seed=7, epoch=lambda: 0, rank=0, world_size=1, start=(4, 30)
    )
    assert list(resumed) == order(4)[30:]  # the rest of the interrupted epoch 4, then
    assert list(resumed) == order(0)  # the epoch the trainer is in


def test_a_blocked_shuffle_keeps_blocks_whole_and_ranks_even() -> None:
    for world in (1, 2, 3):
        shares = [
            list(EpochOrder(1000, shuffle=True, seed=3, epoch=lambda: 2, rank=r, world_size=world,
                            block=64))
            for r in range(world)
        ]  # fmt: skip
        assert len({len(s) for s in shares}) == 1
        everyone = [i for share in shares for i in share]
        assert len(set(everyone)) == len(everyone) >= 1000 - 2 * 64
        for share in shares:  # a block's samples come one after the other
            blocks = [i // 64 for i in share]
            changes = sum(a != b for a, b in zip(blocks, blocks[1:], strict=False))
            assert changes < len(share) // 64 + 1
    one = list(EpochOrder(1000, shuffle=True, seed=3, epoch=lambda: 2, rank=0, world_size=1,
                          block=64))  # fmt: skip
    assert one != sorted(one) and sorted(one) == list(range(1000))


class WhoReads(Dataset):
    """Each sample is (index, the loader worker that read it)."""

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> tuple[int, int]:
        info = get_worker_info()
        return i, info.id if info is not None else -1


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_loader_worker_reads_whole_blocks(shuffle: bool) -> None:
    sampler = EpochOrder(1000, shuffle=shuffle, seed=3, epoch=lambda: 1, rank=0, world_size=1,
                         block=64, readers=2, batch=16)  # fmt: skip
    loader = DataLoader(WhoReads(), batch_size=16, sampler=sampler, num_workers=2)
    readers: dict[int, set[int]] = {}
    seen = []
    for index, worker in loader:
        seen += index.tolist()
        for i, w in zip(index.tolist(), worker.tolist(), strict=True):
            readers.setdefault(i // 64, set()).add(w)
    plain = EpochOrder(1000, shuffle=shuffle, seed=3, epoch=lambda: 1, rank=0, world_size=1,
                       block=64)  # fmt: skip
    assert sorted(seen) == sorted(plain) and len(seen) == len(plain)
    assert seen != list(plain)  # reordered for the workers
    whole = [b for b, workers in readers.items() if len(workers) == 1]
    # 64-sample blocks in 16-sample batches: only the short last block (1000 = 15 * 64 + 40)
    # and the block it is read beside are shared between the workers
    assert len(readers) - len(whole) == 2


class Numbers(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


class ShardedNumbers(Numbers):
    """Gives each reader its own share, as a plugin reading many files would."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.asked: list[tuple[int, int]] = []

    def shard(self, index: int, count: int) -> Any:
        self.asked.append((index, count))
        return iter(range(index, self.n, count))


@pytest.mark.parametrize("kind", [Numbers, ShardedNumbers])
def test_iterable_streams_are_split_between_ranks(kind: type[Numbers]) -> None:
    datasets = [kind(10) for _ in range(2)]
    seen = [list(IterableShard(d, rank, 2, None, batch_size=1)) for rank, d in enumerate(datasets)]
    assert seen == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    if kind is ShardedNumbers:
        assert [d.asked for d in datasets] == [[(0, 2)], [(1, 2)]]
    skipped = IterableShard(kind(10), 0, 1, None, batch_size=2, skip_batches=2)
    assert list(skipped) == [4, 5, 6, 7, 8, 9]


def test_federated_parts_come_from_labels_and_a_client_reads_only_its_own(
    tmp_path: Path,
) -> None:
    from plexa.federated.apps import partitions

    spec = load_pipeline(
        PIPELINES / "digits-federated.yaml",
        ["data.plugin=disk-digits", f"data.params={{folder: {tmp_path}}}", "export.onnx=false"],
    )
    splits = DiskDigits().load(DiskDigits.Config(folder=str(tmp_path)), 0)
    train = splits.train
    assert isinstance(train, Stream)
    parts = partitions(spec, splits)
    assert train.dataset.reads == []  # partitioned without reading one input
    own = subset(train, np.asarray(parts[1]))
    assert isinstance(own, Stream)
    for i in range(len(own.dataset)):
        own.dataset[i]
    assert sorted(train.dataset.reads) == sorted(int(train.dataset.rows[i]) for i in parts[1])


class EpochRows(Rows):
    """Hears the epoch from the core before each epoch starts (per-epoch augmentation)."""

    heard: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        EpochRows.heard.append(epoch)


@data("disk-digits-epochs", override=True)
class DiskDigitsEpochs(DiskDigits):
    def load(self, config: DiskDigits.Config, seed: int) -> DataSplits:
        splits = super().load(config, seed)
        train = splits.train
        assert isinstance(train, Stream)
        rows = EpochRows(train.dataset.path, train.dataset.rows)
        return DataSplits(splits.spec, Stream(rows, train.labels), splits.val, splits.test)


def test_a_dataset_hears_each_epoch_before_it_starts(workdir: Path) -> None:
    EpochRows.heard.clear()
    spec = load_pipeline(
        PIPELINES / "digits-mlp.yaml",
        ["compute.accelerator=cpu", "data.plugin=disk-digits-epochs",
         f"data.params={{folder: {workdir}}}", "train.max_epochs=2", "train.limit_batches=2",
         "export.onnx=false"],
    )  # fmt: skip
    orchestrator.run(spec)
    assert EpochRows.heard == [0, 1]


def test_torch_leaves_the_loader_workers_their_cores_and_gets_its_threads_back() -> None:
    from plexa.training import _threads_beside

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: torch has a single thread either way")
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)  # torch's default: a thread per core
    try:
        with _threads_beside(1):
            assert torch.get_num_threads() == cores - 1
        assert torch.get_num_threads() == cores
        with _threads_beside(cores + 4):  # more workers than cores: torch keeps one thread
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == cores
        with _threads_beside(0):  # in-memory data: nothing changes
            assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(previous)


_MMAP_PROBE = """
import ctypes, sys
import numpy as np
from plexa import streaming

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "fixed":
    streaming.own_pages()
np.ones(8 << 20, dtype=np.uint8)  # a large block, mapped and freed: glibc may raise its bar
before = libc.mallinfo2().hblkhd
held = [np.ones(256 << 10, dtype=np.uint8) for _ in range(8)]  # step-sized blocks
print((libc.mallinfo2().hblkhd - before) >> 10)
"""


@pytest.mark.skipif(
    not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"), reason="needs glibc's mallinfo2"
)
def test_the_loop_and_loader_processes_give_step_sized_blocks_pages_of_their_own() -> None:
    """`own_pages` (called in the loop's process and each loader worker) keeps 256 KiB blocks
    out of the heap after a larger block was freed; glibc alone would take them from the heap,
    which grows through an epoch of a streamed table (see `own_pages`)."""
    import subprocess
    import sys

    def mapped_kib(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout.split()[-1])

    assert mapped_kib("fixed") >= 8 * 256
    assert mapped_kib("default") < 256  # what the fix is for: glibc raised its threshold
