"""The local runner: Lightning on this machine, on CPU, one GPU, or several GPUs with DDP."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from plexa.callbacks import CommitCheckpoint, EpochReport, EpochSeed, EpochSink
from plexa.config import PipelineSpec, TrainSpec
from plexa.loaders import Chunks, DeviceBatches, to_tensors
from plexa.plugins import DataSplits
from plexa.runners import RunInterrupted, Trained


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


def memory_data(module: L.LightningModule, data: DataSplits, train: TrainSpec) -> MemoryData:
    """The data module for `module`: chunked for plexa's task modules, plain batches for a
    plugin's own LightningModule."""
    chunk = getattr(module, "batches_per_step", 1)
    return MemoryData(
        data, train.batch_size, train.seed, train.limit_batches, chunk, train.eval_batch_size
    )


def _accelerator(spec: PipelineSpec) -> tuple[str, int | str, str]:
    accelerator = spec.compute.accelerator
    devices = spec.compute.devices
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("compute.accelerator is 'gpu' but no CUDA GPU is visible here")
    strategy = "ddp" if isinstance(devices, int) and devices > 1 else "auto"
    if devices == "auto" and (accelerator == "cpu" or not torch.cuda.is_available()):
        devices = 1  # Lightning would use one process per CPU core otherwise
    return accelerator, devices, strategy


def run(
    spec: PipelineSpec,
    data: DataSplits,
    module: L.LightningModule,
    run_dir: Path,
    **options: Any,
) -> Trained:
    """Fit on this machine, then test the best checkpoint. Raises RunInterrupted on Ctrl-C.

    `options` are `fit_and_test`'s: monitor, sinks, callbacks, resume_from."""
    accelerator, devices, strategy = _accelerator(spec)
    try:
        return fit_and_test(
            spec,
            data,
            module,
            run_dir,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            **options,
        )
    finally:
        if strategy == "ddp":
            _leave_process_group()


def _leave_process_group() -> None:
    """Lightning keeps the DDP process group for reuse; a process that exits with it alive
    can die in gloo's threads ("terminate called without an active exception"), and
    Lightning's launcher then kills every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def fit_and_test(
    spec: PipelineSpec,
    data: DataSplits,
    module: L.LightningModule,
    run_dir: Path,
    *,
    monitor: tuple[str, str],
    sinks: Sequence[EpochSink] = (),
    callbacks: Sequence[L.Callback] = (),
    resume_from: Path | None = None,
    after_save: Sequence[Callable[[L.Trainer], None]] = (),
    prepare: Callable[[L.Trainer], L.Trainer] = lambda trainer: trainer,
    **placement: Any,
) -> Trained:
    """The training every runner shares; runners differ only in `placement` (accelerator,
    devices, strategy, cluster plugins), `after_save` hooks and `prepare`."""
    from lightning.pytorch.callbacks import EarlyStopping

    t = spec.train
    metric, mode = (t.monitor, monitor[1]) if t.monitor else monitor
    if t.monitor and t.monitor.endswith("loss"):
        mode = "min"
    report = EpochReport(list(sinks))
    checkpoint = CommitCheckpoint(
        [report.report, *after_save],
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=metric,
        mode=mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    cbs: list[L.Callback] = [checkpoint, EpochSeed(t.seed), report]
    if t.early_stopping:
        es = t.early_stopping
        es_metric = es.monitor or metric
        es_mode = "min" if es_metric.endswith("loss") else mode
        cbs.append(EarlyStopping(es_metric, es.min_delta, es.patience, mode=es_mode))
    cbs += callbacks

    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        precision=t.precision,
        # a module that steps its own optimiser (plexa's task modules) clips itself
        gradient_clip_val=t.gradient_clip if module.automatic_optimization else None,
        callbacks=cbs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        **placement,
    )
    trainer = prepare(trainer)
    previous = signal.getsignal(signal.SIGINT)
    datamodule = memory_data(module, data, t)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful teardown then sys.exit(1)
        if not trainer.interrupted:
            raise
        last = Path(checkpoint.last_model_path) if checkpoint.last_model_path else None
        raise RunInterrupted(None, last) from None
    finally:
        if threading.current_thread() is threading.main_thread():  # not so in a Ray worker
            signal.signal(signal.SIGINT, previous)  # Lightning leaves Ctrl-C ignored
    best = checkpoint.best_model_path or None
    results = trainer.test(
        module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
    )
    metrics = {k: float(v) for k, v in results[0].items()} if results else {}
    if checkpoint.best_model_score is not None:
        metrics[f"best_{metric.replace('/', '_')}"] = float(checkpoint.best_model_score)
    return Trained(
        module,
        metrics,
        Path(best) if best else None,
        Path(checkpoint.last_model_path) if checkpoint.last_model_path else None,
    )
