"""The in-memory fast data path: whole epochs, seeded order, equal DDP shards."""

from __future__ import annotations

import numpy as np
import torch

from plexa.loaders import ALIGNMENT, Chunk, DeviceBatches, aligned, to_tensors
from plexa.plugins import Split


def batches(n: int = 103, **kwargs) -> DeviceBatches:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return DeviceBatches(x, torch.arange(n), 10, **kwargs)


def seen(loader: DeviceBatches) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_an_epoch_visits_every_sample_once_and_keeps_pairs_together() -> None:
    loader = batches(shuffle=True)
    order = seen(loader)
    assert sorted(order) == list(range(103))
    assert len(list(loader)) == len(loader) == 11
    for x, y in loader:
        assert torch.equal(x.squeeze(1).long(), y)


def test_order_depends_only_on_seed_and_epoch() -> None:
    epoch = {"now": 0}
    loader = batches(shuffle=True, seed=3, epoch=lambda: epoch["now"])
    first = seen(loader)
    assert seen(batches(shuffle=True, seed=3)) == first  # a fresh loader, same epoch
    epoch["now"] = 1
    assert seen(loader) != first
    assert seen(batches(shuffle=True, seed=4)) != first


def test_evaluation_keeps_the_data_order() -> None:
    assert seen(batches(shuffle=False)) == list(range(103))


def test_ddp_shards_are_disjoint_and_equal_for_training() -> None:
    shards = [seen(batches(shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 51  # one sample dropped so ranks step together
    assert not set(shards[0]) & set(shards[1])
    eval_shards = [seen(batches(shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sorted(eval_shards[0] + eval_shards[1]) == list(range(103))  # evaluation sees all


def test_limit_batches_caps_an_epoch() -> None:
    loader = batches(shuffle=True, limit_batches=3)
    assert len(loader) == 3 and len(seen(loader)) == 30


def test_a_chunk_survives_ddp_moving_it_to_a_gpu() -> None:
    """DistributedDataParallel with device_ids (GPU DDP, Ray Train on GPUs) moves a step's
    inputs itself and rebuilds lists on the way: a Chunk arrives as a plain list of pairs."""
    from torch.distributed.utils import _recursive_to

    from plexa.tasks import _batches

    chunk = Chunk([(torch.zeros(3, 2), torch.zeros(3)), (torch.ones(3, 2), torch.ones(3))])
    (moved, _), *_ = _recursive_to((chunk, 0), torch.device("cpu"), False)
    assert type(moved) is list  # what DDP hands training_step
    batches = _batches(moved)
    assert len(batches) == 2
    assert torch.equal(batches[1][0], torch.ones(3, 2))
    plain = (torch.zeros(3, 2), torch.zeros(3))
    assert _batches(plain) == [plain]


def test_numpy_data_off_a_64_byte_boundary_is_copied_into_aligned_memory() -> None:
    buffer = np.zeros(64 * 10 + 64, dtype=np.uint8)
    start = (-buffer.ctypes.data) % ALIGNMENT + 4  # 4 bytes past a boundary
    x = buffer[start : start + 64 * 10].view(np.float32).reshape(10, 16)
    x[:] = np.arange(160, dtype=np.float32).reshape(10, 16)
    y = np.arange(10)
    tx, ty = to_tensors(Split(x, y), torch.device("cpu"))
    assert tx.data_ptr() % ALIGNMENT == 0 and ty.data_ptr() % ALIGNMENT == 0
    assert np.array_equal(tx.numpy(), x) and np.array_equal(ty.numpy(), y)
    held = torch.zeros(8)  # torch's own memory is aligned already and is not copied
    assert aligned(held).data_ptr() == held.data_ptr()
