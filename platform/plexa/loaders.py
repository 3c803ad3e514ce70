"""The fast data path for data that fits in memory.

The whole split lives on the training device as two tensors; a batch is one index operation,
not `batch_size` calls to `__getitem__` and a collate. Shuffling is seeded by (seed, epoch),
so an epoch's order does not depend on what ran before it: a resumed run sees the same batches
as an uninterrupted one.

`Chunks` hands Lightning several batches per step. Lightning's per-step machinery (hooks,
profiler contexts, result bookkeeping) costs a few hundred microseconds, more than a small
network's forward and backward pass; plexa's task modules loop over a chunk themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from plexa.plugins import Split


class DeviceBatches:
    """An iterable of `(x, y)` batches sliced from device-resident tensors.

    Under DDP each rank takes every `world_size`-th sample of the epoch's permutation; training
    drops the tail so every rank runs the same number of steps (a rank with one step more would
    wait forever in the gradient all-reduce).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        limit_batches: int | None = None,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.rank, self.world_size, self.limit_batches = rank, world_size, limit_batches

    def _indices(self) -> torch.Tensor:
        import torch

        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle:
                order = order[: n - n % self.world_size]
            order = order[self.rank :: self.world_size]
        return order.to(self.x.device)

    def __len__(self) -> int:
        n = len(self.x)
        if self.world_size > 1:
            n = n - n % self.world_size if self.shuffle else n + self.world_size - 1
            n //= self.world_size
        batches = -(-n // self.batch_size)
        return min(batches, self.limit_batches) if self.limit_batches else batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        if not self.shuffle and self.world_size == 1:
            # contiguous slices are views: no gather at all
            for b in range(len(self)):
                s = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield self.x[s], self.y[s]
            return
        for idx in order.split(self.batch_size)[: len(self)]:
            yield self.x[idx], self.y[idx]


def to_tensors(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x = aligned(torch.as_tensor(split.x))
    if x.is_floating_point():
        x = x.float()
    y = aligned(torch.as_tensor(split.y))
    if y.is_floating_point():
        y = y.float()
    return x.to(device), y.to(device)


ALIGNMENT = 64  # bytes; torch's CPU allocator's own alignment


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t`, copied into torch's own memory when it starts off a 64-byte boundary.

    A tensor made from a NumPy array shares NumPy's buffer, whose alignment changes from run to
    run. MKL's kernels take an alignment-dependent path (Intel documents that its results are
    reproducible only for aligned operands), so the same seed could give losses that differ in
    the last bit between two runs.
    """
    return t.clone() if t.device.type == "cpu" and t.data_ptr() % ALIGNMENT else t


class Chunk(list):
    """Several `(x, y)` batches handed to one Lightning step."""


class Chunks:
    """Groups the batches of an epoch into chunks of `size` (None: the whole epoch)."""

    def __init__(self, batches: DeviceBatches, size: int | None) -> None:
        self.batches, self.size = batches, size

    def __len__(self) -> int:
        n = len(self.batches)
        return 1 if self.size is None else -(-n // self.size)

    def __iter__(self) -> Iterator[Chunk]:
        chunk = Chunk()
        for batch in self.batches:
            chunk.append(batch)
            if len(chunk) == self.size:
                yield chunk
                chunk = Chunk()
        if chunk:
            yield chunk
