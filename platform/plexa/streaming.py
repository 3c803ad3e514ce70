"""The streaming data path: splits read from storage by a DataLoader as training needs them.

A data plugin returns `plexa.plugins.Stream` splits and nothing more; this module owns the rest:
each epoch's seeded order, each rank's share of it, the loader's worker processes, and the
loader's position. The position goes into every checkpoint through the data module's
`state_dict`, counted in batches the model has trained on (a loader's own count runs ahead by
the batches it prefetched), so a run interrupted mid-epoch resumes at the first batch it had
not trained on.

A `RayDataset` split is read by Ray Data instead of a DataLoader: on Ray Train workers each rank
reads the shard Ray Train handed it (`RayShard`), elsewhere the whole dataset, both with
`iter_torch_batches`, one pass per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from plexa.errors import DataError, UserError
from plexa.loaders import aligned
from plexa.plugins import Batch, RayDataset, Split, Stream

if TYPE_CHECKING:
    from plexa.config import LoaderSpec
    from plexa.plugins import DataSplits


STAGES = ("train", "val", "test")
NO_RAY_PARTS = (
    "a Ray Data split (plexa.RayDataset) cannot be partitioned between federated clients: it "
    "has no row index for a client to read its own part by; return a map-style plexa.Stream "
    "(or in-memory splits) for federated pipelines"
)


def is_streaming(data: DataSplits) -> bool:
    return any(isinstance(s, Stream) for s in (data.train, data.val, data.test))


def ray_source(split: Split | Stream) -> RayDataset | None:
    """The Ray Data dataset a split streams from, if it is one."""
    if isinstance(split, Stream) and isinstance(split.dataset, RayDataset):
        return split.dataset
    return None


def ray_datasets(data: DataSplits) -> dict[str, Any]:
    """The splits that are Ray Data datasets, by stage, each cut to the columns it is read by
    (what the ray runner hands Ray Train)."""
    found = {}
    for stage in STAGES:
        source = ray_source(getattr(data, stage))
        if source is not None:
            found[stage] = source.dataset.select_columns(source.columns)
    return found


def labels(split: Split | Stream) -> np.ndarray | None:
    """The split's targets without its inputs (federated partitions, stratification); of a
    Ray Data split, its label column read alone (once)."""
    if isinstance(split, Split):
        return np.asarray(split.y)
    if split.labels is not None:
        return np.asarray(split.labels)
    source = ray_source(split)
    return None if source is None else _ray_labels(source)


def _ray_labels(source: RayDataset) -> np.ndarray:
    if "labels" not in source._cache:
        column = source.dataset.select_columns([source.label])
        parts = [
            np.asarray(batch[source.label])
            for batch in column.iter_batches(batch_size=None, batch_format="numpy")
        ]
        source._cache["labels"] = np.concatenate(parts) if parts else np.empty((0,))
    return np.asarray(source._cache["labels"])


def subset(split: Split | Stream, indices: np.ndarray) -> Split | Stream:
    """The samples at `indices`: a federated client's part, read only when it trains."""
    if isinstance(split, Split):
        return Split(split.x[indices], split.y[indices])
    if ray_source(split) is not None:
        raise UserError(NO_RAY_PARTS)
    if isinstance(split.dataset, IterableDataset):
        raise TypeError("an iterable stream has no random access; partition a map-style one")
    picked = None if split.labels is None else np.asarray(split.labels)[indices]
    return Stream(torch.utils.data.Subset(split.dataset, indices.tolist()), picked)


class EpochOrder(Sampler[int]):
    """One rank's indices for one epoch.

    The order is a permutation seeded by (seed, epoch), so it does not depend on what ran
    before; under several ranks each takes every `world_size`-th index, and training first cuts
    the permutation to a multiple of `world_size` so every rank runs the same number of steps.
    `start` (epoch, samples) makes the first pass continue an interrupted epoch; with `block`,
    the shuffle keeps runs of `block` neighbouring samples together (`Stream.block`), and with
    `readers` loader workers taking `batch`-sized batches in turn, the batches of `readers`
    blocks are interleaved so that each block is read by one worker, which decodes it once.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int],
        rank: int,
        world_size: int,
        limit: int | None = None,
        start: tuple[int, int] | None = None,
        on_epoch: Callable[[int], None] | None = None,
        block: int | None = None,
        readers: int = 1,
        batch: int = 1,
    ) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, epoch
        self.rank, self.world_size, self.limit, self.start = rank, world_size, limit, start
        self.on_epoch, self.block, self.readers, self.batch = on_epoch, block, readers, batch

    def _order(self, epoch: int) -> torch.Tensor:
        n = self.size
        if self.shuffle and self.block:
            order = self._blocked(epoch)
        elif self.block and self.world_size == 1 and self.readers > 1:  # evaluation, in order
            order = _interleaved(list(torch.arange(n).split(self.block)), self.readers, self.batch)
        elif self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        else:
            order = torch.arange(n)[self.rank :: self.world_size]
        return order[: self.limit] if self.limit is not None else order

    def _blocked(self, epoch: int) -> torch.Tensor:
        """Blocks in a seeded order, each rank every `world_size`-th of them, and the samples
        of a block in a seeded order of their own: a reader decodes each block once per epoch.
        Every rank stops at `_blocked_length`, the same in every epoch."""
        n, block = self.size, int(self.block or 1)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        starts = torch.arange(0, n, block)[torch.randperm(-(-n // block), generator=gen)]
        parts = []
        for start in starts[self.rank :: self.world_size].tolist():
            inner = torch.Generator().manual_seed(self.seed * 100_003 + epoch * 7_919 + start)
            parts.append(start + torch.randperm(min(block, n - start), generator=inner))
        return _interleaved(parts, self.readers, self.batch)[: self._blocked_length()]

    def _blocked_length(self) -> int:
        """What every rank gets whichever blocks it drew: its share of whole blocks, less the
        part the one short block lacks (a rank may hold it)."""
        n, block = self.size, int(self.block or 1)
        blocks = -(-n // block)
        return max(blocks // self.world_size * block - (blocks * block - n), 0)

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.start or (self.epoch(), 0)
        self.start = None
        return iter(self._order(epoch)[skip:].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch (a resumed one too), before the loader
        starts its workers: a dataset with `set_epoch` (a plugin's per-epoch augmentation)
        hears of it, so each epoch draws anew and a resumed one draws the same again."""
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        """Without drawing an order: Lightning asks for it at every epoch."""
        n, world = self.size, self.world_size
        if self.shuffle and self.block:
            length = self._blocked_length()
        elif self.shuffle:
            length = n // world
        else:
            length = len(range(self.rank, n, world))
        return length if self.limit is None else min(length, self.limit)


def _interleaved(parts: list[torch.Tensor], readers: int, batch: int) -> torch.Tensor:
    """The parts' samples in an order where a DataLoader with `readers` workers, which hands
    batch `i` to worker `i % readers`, gives each worker whole parts: the full batches of each
    `readers` parts taken in turn, and what is left of every part over at the end."""
    if readers <= 1 or not parts:
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    out, rest = [], []
    for first in range(0, len(parts), readers):
        group = parts[first : first + readers]
        full = [p[: len(p) // batch * batch].view(-1, batch) for p in group]
        rest += [p[len(p) // batch * batch :] for p in group]
        for turn in range(max(len(f) for f in full)):
            out += [f[turn] for f in full if turn < len(f)]
    return torch.cat(out + rest)


class IterableShard(IterableDataset):
    """An iterable split's share for one rank and loader worker.

    A dataset with `shard(index, count)` is asked for its share (a plugin that reads files can
    then give each reader its own files); any other is read whole by every reader, which keeps
    every `count`-th sample. `skip_batches` resumes an interrupted epoch: the loader takes
    batches from its workers in turn, so worker `w` had made every `workers`-th of them.
    """

    def __init__(
        self,
        dataset: Any,
        rank: int,
        world_size: int,
        limit: int | None,
        batch_size: int,
        skip_batches: int = 0,
    ) -> None:
        self.dataset, self.rank, self.world_size, self.limit = dataset, rank, world_size, limit
        self.batch_size, self.skip_batches = batch_size, skip_batches

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        index, count = self.rank * workers + worker, self.world_size * workers
        shard = getattr(self.dataset, "shard", None)
        items = shard(index, count) if callable(shard) else None
        if items is None:
            items = itertools.islice(iter(self.dataset), index, None, count)
        per_worker = None if self.limit is None else -(-self.limit // workers)
        done = -(-(self.skip_batches - worker) // workers) * self.batch_size
        self.skip_batches = 0  # a later epoch starts at the beginning
        return itertools.islice(items, done, per_worker)

    def __len__(self) -> int:
        total = len(self.dataset) // self.world_size
        return total if self.limit is None else min(total, self.limit)


def _ray_pair(source: RayDataset, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Ray Data batch (a dict of column tensors) as the `(x, y)` pair plexa's modules take."""
    missing = [c for c in source.columns if c not in batch]
    if missing:
        raise DataError(
            f"the Ray Data split has no column {', '.join(map(repr, missing))} (its batches "
            f"hold {', '.join(map(repr, batch)) or 'no columns'}); RayDataset(features=..., "
            "label=...) names the columns to read"
        )
    if isinstance(source.features, str):
        x = batch[source.features]
    else:
        x = torch.cat([batch[c].reshape(len(batch[c]), -1) for c in source.features], 1)
    return _to_tensors((x, batch[source.label]))


@dataclasses.dataclass(frozen=True)
class RayShard:
    """A Ray Train worker's part of a Ray Data split: its `DataIterator` (Ray Train's
    `get_dataset_shard`) and the whole split's rows, counted once in the driver."""

    iterator: Any
    rows: int


class RayBatches:
    """One rank's batches of a Ray Data split, for Lightning to iterate like a DataLoader.

    `iterator` is Ray Data's `DataIterator`: the shard Ray Train gave this worker, or the whole
    dataset's. Each pass (an epoch) reads it anew with `iter_torch_batches`; a shard's pass
    starts when every worker starts its own (Ray Data's streaming split), so every rank makes
    the same passes. `rows` is this rank's share, for the length; `skip` batches of the first
    pass are read and dropped (an epoch resumed mid-way).
    """

    def __init__(
        self,
        iterator: Any,
        source: RayDataset,
        *,
        rows: int,
        batch_size: int,
        limit: int | None,
        skip: int,
        shuffle_seed: Callable[[], int] | None,
        prefetch: int,
        pin_memory: bool,
    ) -> None:
        self.iterator, self.source, self.rows, self.batch_size = iterator, source, rows, batch_size
        self.limit, self.skip, self.shuffle_seed = limit, skip, shuffle_seed
        self.prefetch, self.pin_memory = prefetch, pin_memory

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A generator: nothing is read, and no pass starts, before its first batch is asked
        for (Lightning calls `iter` once to check that a loader is iterable)."""
        shuffle: dict[str, Any] = {}
        if self.shuffle_seed is not None and self.source.shuffle_buffer:
            shuffle = {
                # Ray Data needs a buffer of at least one batch
                "local_shuffle_buffer_size": max(self.source.shuffle_buffer, self.batch_size),
                "local_shuffle_seed": self.shuffle_seed(),
            }
        batches = self.iterator.iter_torch_batches(
            batch_size=self.batch_size,
            prefetch_batches=self.prefetch,
            pin_memory=self.pin_memory,
            **shuffle,
        )
        skip, self.skip = self.skip, 0  # a later epoch starts at the beginning
        pairs = (_ray_pair(self.source, batch) for batch in batches)
        yield from itertools.islice(pairs, skip, self.limit)

    def __len__(self) -> int:
        """Without reading: Lightning asks for it before each epoch."""
        batches = -(-self.rows // self.batch_size)
        return batches if self.limit is None else min(batches, self.limit)


class _Loader(DataLoader):
    """A DataLoader whose workers exit before it hands out an epoch's last batch.

    Lightning knows a loader's length: it stops asking after the last batch and validates at
    once, so a plain loader's training workers would still hold their memory (decoded data,
    prefetched batches) beside the validation loader's. Reading one batch ahead, this one has
    seen the end, and its workers have gone, by the time the last batch trains.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batches = super().__iter__()
        ahead = next(batches, _END)
        while ahead is not _END:
            batch, ahead = ahead, next(batches, _END)
            yield batch


_END = object()


def _worker_start(worker: int) -> None:
    """In each loader worker, before it reads: the objects it inherited from the training
    process are frozen, so the collector never walks (and so copies) the pages they live on;
    and allocations get pages of their own (`own_pages`) instead of the inherited heap's
    (copied on write, kept after free)."""
    gc.freeze()
    own_pages()


def own_pages() -> None:
    """With glibc, allocations of 128 KiB or more (its starting threshold) get pages of their
    own, handed back when freed. Left to itself glibc raises that threshold to the largest block
    freed (up to 32 MiB), after which a step's gradients and batches come from the heap, which
    fragments and grows through an epoch: measured in the training process of a streamed
    512-column table, 2-4 MB more each second until a memory cap stops the run (with the
    threshold fixed at 1 MiB, still 5 MB/s); flat at 128 KiB."""
    with contextlib.suppress(AttributeError, OSError):  # not glibc
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 << 10)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h; setting it also stops glibc adjusting it


def _epoch_hook(dataset: Any) -> Callable[[int], None] | None:
    """The dataset's `set_epoch`, looked up through `Subset`s (a federated client's part)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    hook = getattr(dataset, "set_epoch", None)
    return hook if callable(hook) else None


class ArrayDataset(Dataset):
    """An in-memory split served through a loader, beside streaming ones."""

    def __init__(self, split: Split) -> None:
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.x[i], self.y[i]


def _to_tensors(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    x, y = aligned(torch.as_tensor(x)), aligned(torch.as_tensor(y))
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return x, y


def _collate(samples: list[Any] | Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of `(x, y)` samples stacked, or a `Batch` a dataset's `__getitems__` stacked."""
    from torch.utils.data import default_collate

    if isinstance(samples, Batch):
        return _to_tensors(samples)
    return _to_tensors(default_collate(samples))


class StreamData(L.LightningDataModule):
    """Serves streaming splits through a DataLoader, this rank's share only, resumable mid-epoch.

    `data.loader` sets the loader: worker processes, batches each worker prefetches, pinned
    memory and workers kept between epochs. A Ray Data split is read by Ray Data instead
    (`RayBatches`: `prefetch` and `pin_memory` apply, `workers` does not), from its entry in
    `shards` (a Ray Train worker's `RayShard`) or, on one rank, whole.
    """

    def __init__(
        self,
        data: DataSplits,
        batch_size: int,
        seed: int,
        limit: int | None,
        loader: LoaderSpec,
        eval_batch_size: int | None = None,
        shards: Mapping[str, RayShard] | None = None,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.limit = data, batch_size, seed, limit
        self.loader, self.shards = loader, dict(shards or {})
        self.eval_batch_size = eval_batch_size or batch_size
        self._resume: tuple[int, int] | None = None

    def setup(self, stage: str) -> None:
        own_pages()  # in the process that runs the loop: it takes every batch the loader reads

    def state_dict(self) -> dict[str, int]:
        """The training position Lightning puts into every checkpoint: the epoch and the
        batches this rank has trained in it."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        # Lightning's own count of this epoch's batches (typed as a tracker without `processed`)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return {"epoch": trainer.current_epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = (state["epoch"], state["batches"])

    def batches_per_epoch(self) -> int:
        """Optimiser steps per epoch on this rank (the learning-rate schedule's length)."""
        return len(self._loader("train", train=True))

    def _loader(self, stage: str, train: bool, start: tuple[int, int] | None = None) -> Any:
        trainer = self.trainer
        assert trainer is not None
        split = getattr(self.data, stage)
        source = ray_source(split)
        if source is not None:
            return self._ray_loader(stage, split, source, train, start)
        dataset = split.dataset if isinstance(split, Stream) else ArrayDataset(split)
        batch = self.batch_size if train else self.eval_batch_size
        limit = None if self.limit is None else self.limit * batch
        rank, world = trainer.global_rank, trainer.world_size
        sampler = None
        if isinstance(dataset, IterableDataset):
            skip = start[1] if start else 0
            dataset = IterableShard(dataset, rank, world, limit, batch, skip)
        else:
            sampler = EpochOrder(
                len(dataset),
                shuffle=train,
                seed=self.seed,
                epoch=lambda: trainer.current_epoch,
                rank=rank,
                world_size=world,
                limit=limit,
                start=(start[0], start[1] * batch) if start else None,
                on_epoch=_epoch_hook(dataset),
                block=split.block if isinstance(split, Stream) else None,
                readers=self.loader.workers,
                batch=batch,
            )
        spec = self.loader
        workers = spec.workers
        return _Loader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=spec.pin_memory and trainer.strategy.root_device.type == "cuda",
            prefetch_factor=spec.prefetch if workers else None,
            persistent_workers=spec.persistent_workers and workers > 0,
            worker_init_fn=_worker_start,
        )

    def _ray_loader(
        self,
        stage: str,
        split: Stream,
        source: RayDataset,
        train: bool,
        start: tuple[int, int] | None,
    ) -> RayBatches:
        trainer = self.trainer
        assert trainer is not None
        rank, world = trainer.global_rank, trainer.world_size
        shard = self.shards.get(stage)
        if shard is None and world > 1:
            raise UserError(
                f"the {stage} split is a Ray Data dataset, which only Ray Train splits between "
                f"{world} ranks: train it with compute.runner=ray (its data plugin saying so in "
                "uses_ray), or on one device"
            )
        if shard is None:
            shard = RayShard(source.dataset.select_columns(source.columns).iterator(), len(split))
        seed = self.seed

        def shuffle_seed() -> int:
            return seed * 100_003 + trainer.current_epoch * 1_009 + rank

        spec = self.loader
        return RayBatches(
            shard.iterator,
            source,
            rows=shard.rows // world,  # Ray Train gives every worker as many rows
            batch_size=self.batch_size if train else self.eval_batch_size,
            limit=self.limit,
            skip=start[1] if start else 0,
            shuffle_seed=shuffle_seed if train else None,
            prefetch=spec.prefetch,
            pin_memory=spec.pin_memory and trainer.strategy.root_device.type == "cuda",
        )

    def train_dataloader(self) -> Any:
        start, self._resume = self._resume, None
        if start is not None and not 0 < start[1] < self.batches_per_epoch():
            start = None  # saved at an epoch's end: the next epoch starts from its beginning
        return self._loader("train", train=True, start=start)

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)


def iter_batches(split: Split | Stream, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """A split's samples in order, as `(x, y)` batches of tensors, in this process (the
    confusion matrix, the export's parity inputs)."""
    if isinstance(split, Split):
        for start in range(0, len(split), batch_size):
            end = start + batch_size
            yield _to_tensors((split.x[start:end], split.y[start:end]))
        return
    source = ray_source(split)
    if source is not None:
        iterator = source.dataset.select_columns(source.columns).iterator()
        for batch in iterator.iter_torch_batches(batch_size=batch_size, device="cpu"):
            yield _ray_pair(source, batch)
        return
    dataset = split.dataset
    if not isinstance(dataset, IterableDataset):
        from torch.utils.data import DataLoader

        # in order, here; PyTorch's fetcher reads with the dataset's `__getitems__` if it has one
        yield from DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
        return
    samples = iter(dataset)
    while chunk := list(itertools.islice(samples, batch_size)):
        yield _collate(chunk)


def first(split: Split | Stream, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `samples` inputs and targets of a split, as arrays (of a Ray Data split,
    only these rows are read)."""
    if isinstance(split, Split):
        return np.asarray(split.x[:samples]), np.asarray(split.y[:samples])
    source = ray_source(split)
    if source is not None:
        split = Stream(dataclasses.replace(source, dataset=source.dataset.limit(samples)))
    got = next(iter_batches(split, samples), None)
    if got is None:
        return np.empty((0,)), np.empty((0,))
    return got[0].numpy(), got[1].numpy()


def head(split: Split | Stream, samples: int) -> np.ndarray:
    """The first `samples` inputs of a split as one array."""
    return first(split, samples)[0]
