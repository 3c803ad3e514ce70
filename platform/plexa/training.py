"""Lightning training every runner shares: the in-memory data module, the accelerator a
pipeline asks for, the Trainer, and fit-then-test with plexa's checkpoint, seeding and epoch
report callbacks. Runners differ only in placement (accelerator, devices, strategy, cluster
plugins), hooks after each saved checkpoint, and `prepare`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from plexa.assembly import monitor as default_monitor
from plexa.callbacks import CommitCheckpoint, EpochReport, EpochSeed, EpochSink, SaveOnInterrupt
from plexa.config import ComputeSpec, LoaderSpec, PipelineSpec, TrainSpec
from plexa.errors import RunInterrupted, UserError
from plexa.loaders import Chunks, DeviceBatches, to_tensors
from plexa.plugins import DataSplits
from plexa.runs import CHECKPOINTS
from plexa.streaming import RayShard, StreamData, is_streaming


@dataclass
class Fitted:
    """What `fit_and_test` leaves: the module, its test metrics and its checkpoints."""

    module: L.LightningModule
    metrics: dict[str, float]
    best_checkpoint: Path | None
    last_checkpoint: Path | None


class MemoryData(L.LightningDataModule):
    """Serves in-memory splits through `DeviceBatches`, placed on this rank's device.

    `chunk` > 1 (or None, the whole epoch) groups batches for modules that loop over several
    batches per Lightning step (plexa's task modules); 1 serves plain batches.
    """

    def __init__(
        self,
        data: DataSplits,
        batch_size: int,
        seed: int,
        limit: int | None,
        chunk: int | None = 1,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.limit = data, batch_size, seed, limit
        self.chunk = chunk
        self.eval_batch_size = eval_batch_size or max(batch_size, 1024)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def batches_per_epoch(self) -> int:
        """Optimiser steps per epoch on this rank, whatever the chunking."""
        return len(self._batches("train", shuffle=True))

    def _loader(self, stage: str, shuffle: bool) -> DeviceBatches | Chunks:
        batches = self._batches(stage, shuffle)
        return batches if self.chunk == 1 else Chunks(batches, self.chunk)

    def _batches(self, stage: str, shuffle: bool) -> DeviceBatches:
        trainer = self.trainer
        assert trainer is not None
        if stage not in self._cache:
            split = getattr(self.data, stage)
            self._cache[stage] = to_tensors(split, trainer.strategy.root_device)
        x, y = self._cache[stage]
        return DeviceBatches(
            x,
            y,
            self.batch_size if stage == "train" else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            epoch=lambda: trainer.current_epoch,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            limit_batches=self.limit,
        )

    def train_dataloader(self) -> DeviceBatches | Chunks:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | Chunks:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DeviceBatches | Chunks:
        return self._loader("test", shuffle=False)


def data_module(
    module: L.LightningModule,
    data: DataSplits,
    train: TrainSpec,
    loader: LoaderSpec | None = None,
    shards: Mapping[str, RayShard] | None = None,
) -> MemoryData | StreamData:
    """The data module for `module`: streaming splits through a DataLoader (`loader`), Ray
    Data splits from this worker's `shards` (by stage); splits in memory on the device,
    chunked for plexa's task modules, plain batches for a plugin's own LightningModule."""
    if is_streaming(data):
        return StreamData(
            data, train.batch_size, train.seed, train.limit_batches, loader or LoaderSpec(),
            train.eval_batch_size, shards,
        )  # fmt: skip
    chunk = getattr(module, "batches_per_step", 1)
    return MemoryData(
        data, train.batch_size, train.seed, train.limit_batches, chunk, train.eval_batch_size
    )


def placement(compute: ComputeSpec) -> dict[str, Any]:
    """Lightning's accelerator, devices and strategy for `compute` on this machine: turned
    from flags into Trainer arguments once, so nothing downstream asks "is this DDP?"."""
    accelerator, devices = compute.accelerator, compute.devices
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("compute.accelerator is 'gpu' but no CUDA GPU is visible here")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    strategy = "ddp" if isinstance(devices, int) and devices > 1 else "auto"
    if devices == "auto" and accelerator == "cpu":
        devices = 1  # Lightning would use one process per CPU core otherwise
    return {"accelerator": accelerator, "devices": devices, "strategy": strategy}


def trainer(
    train: TrainSpec,
    *,
    epochs: int,
    callbacks: Sequence[L.Callback],
    root: Path | None = None,
    clip: bool = True,
    checkpointing: bool = True,
    validation: bool = True,
    **place: Any,
) -> L.Trainer:
    """A Lightning Trainer as plexa runs them: no logger or progress bar (plexa reports
    epochs itself), no sanity check; `clip` for modules Lightning steps (plexa's task modules
    step their own optimiser and clip themselves)."""
    return L.Trainer(
        max_epochs=epochs,
        precision=train.precision,
        gradient_clip_val=train.gradient_clip if clip else None,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validation else 0,
        default_root_dir=root,
        use_distributed_sampler=False,  # plexa's loaders give each rank its own share
        **place,
    )


def test(
    module: L.LightningModule,
    data: DataSplits,
    train: TrainSpec,
    loader: LoaderSpec | None = None,
    **place: Any,
) -> dict[str, float]:
    """Test metrics of `module` as it is, on one device."""
    results = trainer(train, epochs=1, callbacks=[], checkpointing=False, **place).test(
        module, datamodule=data_module(module, data, train, loader), verbose=False
    )
    return {k: float(v) for k, v in results[0].items()} if results else {}


@contextlib.contextmanager
def _threads_beside(workers: int) -> Iterator[None]:
    """torch's threads in this process, fewer while `workers` loader processes share its cores.

    torch's intra-op pool takes every core by default, and beside busy loader processes on the
    same cores its threads wait for each other's time slices instead of computing.
    """
    before = torch.get_num_threads()
    wanted = max(1, min(before, len(os.sched_getaffinity(0)) - workers))
    if workers == 0 or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_and_test(
    spec: PipelineSpec,
    data: DataSplits,
    module: L.LightningModule,
    run_dir: Path,
    *,
    monitor: tuple[str, str] | None = None,
    sinks: Sequence[EpochSink] = (),
    callbacks: Sequence[L.Callback] = (),
    resume_from: Path | None = None,
    after_save: Sequence[Callable[[L.Trainer], None]] = (),
    prepare: Callable[[L.Trainer], L.Trainer] = lambda trainer: trainer,
    shards: Mapping[str, RayShard] | None = None,
    **placement: Any,
) -> Fitted:
    """The training every runner shares; runners differ only in `placement` (accelerator,
    devices, strategy, cluster plugins), `after_save` hooks, `prepare` and, on Ray Train, the
    worker's `shards` of Ray Data splits."""
    from lightning.pytorch.callbacks import EarlyStopping

    t = spec.train
    monitor = monitor or default_monitor(module)
    metric, mode = (t.monitor, monitor[1]) if t.monitor else monitor
    if t.monitor and t.monitor.endswith("loss"):
        mode = "min"
    report = EpochReport(list(sinks))
    checkpoint = CommitCheckpoint(
        [report.report, *after_save],
        dirpath=run_dir / CHECKPOINTS,
        filename="best",
        monitor=metric,
        mode=mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    datamodule = data_module(module, data, t, spec.data.loader, shards)
    streaming = isinstance(datamodule, StreamData)
    cbs: list[L.Callback] = [checkpoint, EpochSeed(t.seed, per_batch=streaming), report]
    if streaming:
        # the loader's position is in the checkpoint: an interrupted run saves where it is
        cbs.append(SaveOnInterrupt(run_dir / CHECKPOINTS / "last.ckpt"))
    if t.early_stopping:
        es = t.early_stopping
        es_metric = es.monitor or metric
        es_mode = "min" if es_metric.endswith("loss") else mode
        cbs.append(EarlyStopping(es_metric, es.min_delta, es.patience, mode=es_mode))
    cbs += callbacks

    fitter = trainer(
        t,
        epochs=t.max_epochs,
        callbacks=cbs,
        root=run_dir,
        clip=module.automatic_optimization,
        **placement,
    )
    fitter = prepare(fitter)
    previous = signal.getsignal(signal.SIGINT)
    readers = spec.data.loader.workers if streaming else 0
    try:
        with _threads_beside(readers):
            fitter.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful teardown then sys.exit(1)
        if not fitter.interrupted:
            raise
        saved = run_dir / CHECKPOINTS / "last.ckpt"  # an epoch's end, or where it stopped
        raise RunInterrupted(None, saved if saved.exists() else None) from None
    finally:
        if threading.current_thread() is threading.main_thread():  # not so in a Ray worker
            signal.signal(signal.SIGINT, previous)  # Lightning leaves Ctrl-C ignored
    best = checkpoint.best_model_path or None
    with _threads_beside(readers):
        results = fitter.test(
            module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
        )
    metrics = {k: float(v) for k, v in results[0].items()} if results else {}
    if checkpoint.best_model_score is not None:
        metrics[f"best_{metric.replace('/', '_')}"] = float(checkpoint.best_model_score)
    return Fitted(
        module,
        metrics,
        Path(best) if best else None,
        Path(checkpoint.last_model_path) if checkpoint.last_model_path else None,
    )
