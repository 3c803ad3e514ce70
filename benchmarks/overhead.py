"""Training-loop overhead: plexa against a plain PyTorch loop and bare Lightning.

All three contenders train the same CNN (built by the pipeline's plugin, same init seed) on the
same arrays with the same batch size and AdamW settings, at a constant learning rate, so the
only thing that differs is the loop around the network:

- plain: `TensorDataset` + `DataLoader` (per-sample `__getitem__` and collate), a hand loop
  with torch's default AdamW (on CPU a Python loop over the parameters);
- plain, fused AdamW: the same loop stepping AdamW with torch's fused kernel, as plexa does
  (`plexa.optim`): plexa against it is the loop's own cost alone;
- lightning: a minimal LightningModule that calls `self.log` every step, same DataLoaders;
- plexa: the pipeline's task module on `MemoryData` (batches indexed from resident tensors),
  with a Trainer configured like `plexa.training.fit_and_test` minus checkpointing.

An epoch is timed from its start to the end of its validation pass. The first epoch of each run
is warm-up and dropped; a run's figure is the median of its other epochs, and a contender's
figure is the median over runs. Runs are interleaved (a, b, c, a, b, c, ...) so slow patches of
machine noise hit every contender alike.

    .venv/bin/python benchmarks/overhead.py [--epochs 6] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plexa.assembly import assemble
from plexa.callbacks import EpochSeed
from plexa.config import PipelineSpec, load_pipeline
from plexa.plugins import DataSplits
from plexa.quiet import quiet_libraries
from plexa.training import data_module

ROOT = Path(__file__).resolve().parent.parent


class EpochTimer(L.Callback):
    """Wall time per epoch; Lightning 2.6 calls `on_train_epoch_end` after the epoch's
    validation, so each figure covers training and validation, like the plain loop's."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class BareModule(L.LightningModule):
    """What a Lightning user writes first: log loss/acc through `self.log` at every step."""

    def __init__(self, net: nn.Module, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.net, self.lr, self.weight_decay = net, lr, weight_decay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log("val/loss", F.cross_entropy(out, y), on_step=False, on_epoch=True)
        self.log("val/acc", (out.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def _loaders(data: DataSplits, batch_size: int) -> tuple[DataLoader, DataLoader]:
    """The standard path: a Dataset of tensors, collated sample by sample."""

    def dataset(split: Any) -> TensorDataset:
        return TensorDataset(torch.as_tensor(split.x), torch.as_tensor(split.y))

    return (
        DataLoader(dataset(data.train), batch_size=batch_size, shuffle=True, num_workers=0),
        DataLoader(dataset(data.val), batch_size=batch_size, shuffle=False, num_workers=0),
    )


def _trainer(spec: PipelineSpec, callbacks: list[L.Callback], root: str) -> L.Trainer:
    return L.Trainer(
        max_epochs=spec.train.max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )


def run_plain(spec: PipelineSpec, root: str, fused: bool | None = None) -> list[float]:
    _, data, net, _ = assemble(spec)  # seeds, then builds: the same initial weights as plexa
    train, val = _loaders(data, spec.train.batch_size)
    opt = spec.train.optimizer
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, fused=fused
    )
    seconds: list[float] = []
    for _ in range(spec.train.max_epochs):
        start = time.perf_counter()
        net.train()
        for x, y in train:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
        net.eval()
        total, correct, n = 0.0, 0, 0  # the val loss/acc a real loop would report
        with torch.no_grad():
            for x, y in val:
                out = net(x)
                total += F.cross_entropy(out, y, reduction="sum").item()
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        seconds.append(time.perf_counter() - start)
    return seconds


def run_lightning(spec: PipelineSpec, root: str) -> list[float]:
    _, data, net, _ = assemble(spec)
    train, val = _loaders(data, spec.train.batch_size)
    opt = spec.train.optimizer
    timer = EpochTimer()
    trainer = _trainer(spec, [timer], root)
    trainer.fit(BareModule(net, opt.lr, opt.weight_decay), train, val)
    return timer.seconds


def run_plexa(spec: PipelineSpec, root: str) -> list[float]:
    _, data, _, module = assemble(spec)
    t = spec.train
    timer = EpochTimer()
    # EpochSeed as in the local runner; the timer goes first so its epoch includes EpochSeed
    trainer = _trainer(spec, [timer, EpochSeed(t.seed)], root)
    trainer.fit(module, datamodule=data_module(module, data, t))
    return timer.seconds


def run_plain_fused(spec: PipelineSpec, root: str) -> list[float]:
    return run_plain(spec, root, fused=True)


CONTENDERS: dict[str, Callable[[PipelineSpec, str], list[float]]] = {
    "plain PyTorch": run_plain,
    "plain PyTorch, fused AdamW": run_plain_fused,
    "bare Lightning": run_lightning,
    "plexa": run_plexa,
}


def _markdown(meta: dict[str, str], rows: list[tuple[str, float, float, list[float]]]) -> str:
    lines = ["# Training-loop overhead", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "All figures are medians: per run, the median epoch (train + validation) after a",
        "warm-up epoch; per contender, the median over runs. The fastest run is shown as a hint",
        "of how much of the spread is other load on the machine.",
        "",
        "| contender | s/epoch (median) | vs plain | fastest run (s) | per-run medians (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, med, ratio, runs in rows:
        per_run = ", ".join(f"{s:.4f}" for s in runs)
        lines.append(f"| {name} | {med:.4f} | {ratio:.2f}x | {min(runs):.4f} | {per_run} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    p.add_argument("--repeats", type=int, default=5, help="runs per contender")
    p.add_argument("--pipeline", default=str(ROOT / "pipelines" / "digits-cnn.yaml"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.md"))
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is discarded as warm-up")

    quiet_libraries()  # Lightning's per-fit banners would bury the table
    overrides = [
        f"train.max_epochs={args.epochs}",
        "train.scheduler.name=none",  # constant rate in every contender: time the loop only
        "train.scheduler.warmup_epochs=0",
    ]
    spec = load_pipeline(args.pipeline, overrides)
    _, data, _, _ = assemble(spec)  # only for the sizes in the report
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    per_run: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="plexa-overhead-") as root:
        for rep in range(args.repeats):
            for name, fn in CONTENDERS.items():
                epochs = fn(spec, root)
                per_run[name].append(statistics.median(epochs[1:]))
            print(
                f"run {rep + 1}/{args.repeats}: "
                + ", ".join(f"{n} {v[-1]:.4f}s" for n, v in per_run.items()),
                flush=True,
            )
    total = time.perf_counter() - t0
    load_after = os.getloadavg()[0]

    medians = {name: statistics.median(v) for name, v in per_run.items()}
    plain = medians["plain PyTorch"]
    rows = [(n, medians[n], medians[n] / plain, per_run[n]) for n in CONTENDERS]
    bs = spec.train.batch_size
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "pipeline": Path(args.pipeline).name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "machine cores": str(os.cpu_count()),
        "torch threads": f"{torch.get_num_threads()} (torch's default, left as is)",
        "load average before / after": f"{load_before:.2f} / {load_after:.2f}",
        "epochs per run": f"{args.epochs} (first discarded)",
        "repeats": str(args.repeats),
        "batch size": str(bs),
        "samples train / val": f"{len(data.train)} / {len(data.val)}",
        "steps per epoch train / val": f"{-(-len(data.train) // bs)} / {-(-len(data.val) // bs)}",
        "ratio plexa / plain (median)": f"{medians['plexa'] / plain:.2f}x",
        "ratio plexa / plain with fused AdamW (the loop's own cost)": (
            f"{medians['plexa'] / medians['plain PyTorch, fused AdamW']:.2f}x"
        ),
        "ratio lightning / plain (median)": f"{medians['bare Lightning'] / plain:.2f}x",
        "benchmark wall time": f"{total:.0f} s",
    }
    print()
    print(_markdown(meta, rows), end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_markdown(meta, rows))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
