"""The streaming data path: splits read from storage by a DataLoader as training needs them.

A data plugin returns `plexa.plugins.Stream` splits and nothing more; this module owns the rest:
each epoch's seeded order, each rank's share of it, the loader's worker processes, and the
loader's position. The position goes into every checkpoint through the data module's
`state_dict`, counted in batches the model has trained on (a loader's own count runs ahead by
the batches it prefetched), so a run interrupted mid-epoch resumes at the first batch it had
not trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from plexa.plugins import Split, Stream

if TYPE_CHECKING:
    from plexa.config import LoaderSpec
    from plexa.plugins import DataSplits


def is_streaming(data: DataSplits) -> bool:
    return any(isinstance(s, Stream) for s in (data.train, data.val, data.test))


def labels(split: Split | Stream) -> np.ndarray | None:
    """The split's targets without its inputs (federated partitions, stratification)."""
    if isinstance(split, Split):
        return np.asarray(split.y)
    return None if split.labels is None else np.asarray(split.labels)


def subset(split: Split | Stream, indices: np.ndarray) -> Split | Stream:
    """The samples at `indices`: a federated client's part, read only when it trains."""
    if isinstance(split, Split):
        return Split(split.x[indices], split.y[indices])
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
    the shuffle keeps runs of `block` neighbouring samples together (`Stream.block`).
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
    ) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, epoch
        self.rank, self.world_size, self.limit, self.start = rank, world_size, limit, start
        self.on_epoch, self.block = on_epoch, block

    def _order(self, epoch: int) -> torch.Tensor:
        n = self.size
        if self.shuffle and self.block:
            order = self._blocked(epoch)
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
        order = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        return order[: self._blocked_length()]

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
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return x, y


def _collate(samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import default_collate

    return _to_tensors(default_collate(samples))


class StreamData(L.LightningDataModule):
    """Serves streaming splits through a DataLoader, this rank's share only, resumable mid-epoch.

    `data.loader` sets the loader: worker processes, batches each worker prefetches, pinned
    memory and workers kept between epochs.
    """

    def __init__(
        self,
        data: DataSplits,
        batch_size: int,
        seed: int,
        limit: int | None,
        loader: LoaderSpec,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.limit = data, batch_size, seed, limit
        self.loader = loader
        self.eval_batch_size = eval_batch_size or batch_size
        self._resume: tuple[int, int] | None = None

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
        from torch.utils.data import DataLoader

        trainer = self.trainer
        assert trainer is not None
        split = getattr(self.data, stage)
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
            )
        spec = self.loader
        workers = spec.workers
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=spec.pin_memory and trainer.strategy.root_device.type == "cuda",
            prefetch_factor=spec.prefetch if workers else None,
            persistent_workers=spec.persistent_workers and workers > 0,
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
    dataset = split.dataset
    samples: Iterator[Any] = (
        iter(dataset)
        if isinstance(dataset, IterableDataset)
        else (dataset[i] for i in range(len(dataset)))
    )
    while chunk := list(itertools.islice(samples, batch_size)):
        yield _collate(chunk)


def head(split: Split | Stream, samples: int) -> np.ndarray:
    """The first `samples` inputs of a split as one array."""
    if isinstance(split, Split):
        return np.asarray(split.x[:samples])
    first = next(iter_batches(split, samples), None)
    return np.empty((0,)) if first is None else first[0].numpy()
