"""Lightning callbacks every runner uses: per-epoch seeding, and the per-epoch report that feeds
the console and the tracker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from plexa.loaders import Chunk

EpochSink = Callable[[int, dict[str, float]], None]


class EpochSeed(L.Callback):
    """Reseed torch from (seed, epoch, rank) at each epoch start, and with `per_batch` from
    the batch's index too.

    An epoch's (a batch's) dropout masks then do not depend on the RNG history before it, so a
    run resumed from a checkpoint continues exactly like an uninterrupted one.
    """

    def __init__(self, seed: int, per_batch: bool = False) -> None:
        self.seed, self.per_batch = seed, per_batch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reseed(
            self.seed * 1_000_003 + trainer.current_epoch * 1_009 + trainer.global_rank,
            pl_module.device,
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        # a run that resumes mid-epoch (streaming data) then draws the masks it would have
        if self.per_batch:
            epoch = trainer.current_epoch
            reseed(
                self.seed * 1_000_003 + epoch * 1_009 + idx * 65_537 + trainer.global_rank,
                pl_module.device,
            )


def reseed(seed: int, device: torch.device) -> None:
    """Seed the CPU generator and the one of the device the module runs on.

    `torch.manual_seed` also seeds every CUDA and XPU device, even absent ones: about 0.3 ms a
    call on a CPU-only machine, a quarter of a small model's training step when done per batch.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device: each DDP rank sets its own
    elif device.type != "cpu":
        torch.manual_seed(seed)


class EpochReport(L.Callback):
    """Gathers one epoch's metrics, learning rate, time and throughput, and hands them to sinks.

    `epoch_seconds` is the whole epoch (validation and checkpoint included); `samples_per_second`
    is training's throughput, its samples over the time from the epoch's start to the end of
    its last training batch, as Lightning's ThroughputMonitor counts it. Reports on rank zero
    only; the metrics it reads were already reduced over ranks.
    """

    def __init__(self, sinks: list[EpochSink]) -> None:
        self.sinks = sinks
        self._start = self._trained = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._trained = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        # a chunk of batches (plexa's task modules) or one batch
        self._samples += (
            sum(len(y) for _, y in batch) if isinstance(batch, Chunk) else len(batch[0])
        )
        self._trained = time.perf_counter()

    def report(self, trainer: L.Trainer) -> None:
        """Called on every rank by `CommitCheckpoint` once the epoch's checkpoint is saved."""
        seconds = time.perf_counter() - self._start
        rate = self._samples / max(self._trained - self._start, 1e-9)
        rates = [rate]
        if trainer.world_size > 1:  # every rank takes part; rank zero logs each worker's rate
            gathered = trainer.strategy.all_gather(torch.tensor([rate], dtype=torch.float64))
            rates = gathered.flatten().tolist()
        if not trainer.is_global_zero:
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] != "test"
        }
        metrics["epoch_seconds"] = seconds
        metrics["samples_per_second"] = sum(rates)
        if len(rates) > 1:
            metrics.update({f"worker_{r}/samples_per_second": v for r, v in enumerate(rates)})
        metrics["global_step"] = float(trainer.global_step)
        if trainer.optimizers:
            metrics["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        for sink in self.sinks:
            sink(trainer.current_epoch, metrics)


class CommitCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that announces an epoch only after saving it.

    An epoch is then either saved and reported, or neither: a run interrupted at any point and
    resumed from its last checkpoint logs every epoch exactly once. `after_save` hooks run on
    every rank (a distributed runner hands the checkpoint to its cluster there).
    """

    def __init__(self, after_save: Sequence[Callable[[L.Trainer], None]], **kwargs: Any) -> None:
        super().__init__(save_on_train_epoch_end=True, **kwargs)
        self.after_save = list(after_save)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        for hook in self.after_save:
            hook(trainer)


class SaveOnInterrupt(L.Callback):
    """Saves `path` when training stops on an exception (Ctrl-C included), wherever in the epoch
    it is: with a loader whose position is in the checkpoint (`plexa.streaming`), a resumed run
    continues at the next batch. Lightning's own `OnExceptionCheckpoint` would do the saving
    too, but its presence makes every `fit` without `ckpt_path` look for a "last" checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        trainer.save_checkpoint(self.path)
