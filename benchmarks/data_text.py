"""The `text` plugin's two tokenizers side by side: byte-level BPE against characters.

1. Tokenizing: the built-in corpus (standard-library docstrings, `--max-chars`) turned into
   ids, block by block as the plugin does: characters through the plugin's vocabulary lookup,
   BPE through `tokenizers`' `encode_batch` (its training on the training blocks is timed on
   its own: it happens once per corpus, then the token file is cached).
2. Training: the text-charlm transformer (pipelines/text-charlm.yaml and text-bpe.yaml, the
   same network but for the vocabulary) for one epoch cut to `--batches` batches, each on its
   own data path: characters as in-memory arrays (MemoryData), BPE windows read from the
   memory-mapped token file through a DataLoader (StreamData). Validation is off: the figure is
   training alone. Throughput is given in samples, tokens and characters of text per second
   (a BPE token covers several characters).

Every figure is the median of `--repeats` runs, the contenders interleaved (char, bpe, char,
...) so a slow patch of machine noise hits both. The token cache goes to a temporary folder.

    .venv/bin/python benchmarks/data_text.py [--max-chars 300000] [--batches 30] [--repeats 3]
        [--threads N]
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
import numpy as np
import tokenizers
import torch

from plexa.assembly import assemble
from plexa.config import PipelineSpec, load_pipeline
from plexa.quiet import quiet_libraries
from plexa.training import data_module
from plexa_data.text import Text, deal, read_text, train_bpe

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("char", "bpe")


def median_of(repeats: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    runs = [fn() for _ in range(repeats)]
    return statistics.median(runs), runs


# --------------------------------------------------------------------------- tokenizing


def tokenizing(max_chars: int, vocab_size: int, repeats: int) -> dict[str, Any]:
    """Seconds to turn the corpus into ids, each way; BPE's training on its own."""
    text = read_text(None, max_chars)
    config = Text.Config(max_chars=max_chars, tokenizer="bpe", vocab_size=vocab_size)
    chunks = [text[i : i + config.block] for i in range(0, len(text), config.block)]
    train_blocks = deal(len(chunks), config, len(text))[0]
    tokenizer = train_bpe([chunks[i] for i in train_blocks], vocab_size)

    def chars() -> float:
        start = time.perf_counter()
        index = {ch: i for i, ch in enumerate(sorted(set(text)))}
        for chunk in chunks:
            np.fromiter((index[ch] for ch in chunk), dtype=np.int64, count=len(chunk))
        return time.perf_counter() - start

    def bpe() -> float:
        start = time.perf_counter()
        for i in range(0, len(chunks), 1024):
            for encoding in tokenizer.encode_batch(chunks[i : i + 1024]):
                np.asarray(encoding.ids, dtype=np.uint16)
        return time.perf_counter() - start

    def training() -> float:
        start = time.perf_counter()
        train_bpe([chunks[i] for i in train_blocks], vocab_size)
        return time.perf_counter() - start

    n_bpe = sum(len(e.ids) for e in tokenizer.encode_batch(chunks))
    out: dict[str, Any] = {"chars": len(text), "tokens": {"char": len(text), "bpe": n_bpe}}
    out["seconds"] = {"char": [], "bpe": []}
    for _ in range(repeats):  # interleaved
        out["seconds"]["char"].append(chars())
        out["seconds"]["bpe"].append(bpe())
    out["train_seconds"] = median_of(repeats, training)
    return out


# --------------------------------------------------------------------------- training


class TrainTimer(L.Callback):
    """Wall time of the training epoch (validation is off)."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start


def train_once(spec: PipelineSpec, root: str) -> tuple[float, int]:
    _, data, _, module = assemble(spec)
    timer = TrainTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
    )
    served = data_module(module, data, spec.train, spec.data.loader)
    trainer.fit(module, datamodule=served)
    # optimiser steps, whatever the chunking (plexa's task modules take several per Lightning step)
    return timer.seconds, served.batches_per_epoch()


def specs(batches: int, max_chars: int, vocab_size: int) -> dict[str, PipelineSpec]:
    overrides = [
        "train.max_epochs=1",
        f"train.limit_batches={batches}",
        f"data.params.max_chars={max_chars}",
    ]
    return {
        "char": load_pipeline(ROOT / "pipelines" / "text-charlm.yaml", overrides),
        "bpe": load_pipeline(
            ROOT / "pipelines" / "text-bpe.yaml",
            [*overrides, f"data.params.vocab_size={vocab_size}"],
        ),
    }


# --------------------------------------------------------------------------- report


def _markdown(meta: dict[str, str], tok: dict[str, Any], fit: dict[str, Any]) -> str:
    lines = ["# Text data: byte-level BPE against characters", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "## Tokenizing the corpus",
        "",
        "Medians of the runs; BPE's tokens are read from the cached token file after the first",
        "load, so tokenizing (and training the tokenizer) is paid once per corpus.",
        "",
        "| tokenizer | tokens | chars/token | s (median) | tokens/s | chars/s | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind in KINDS:
        n, runs = tok["tokens"][kind], tok["seconds"][kind]
        s = statistics.median(runs)
        per = tok["chars"] / n
        shown = ", ".join(f"{r:.4f}" for r in runs)
        lines.append(
            f"| {kind} | {n} | {per:.2f} | {s:.4f} | {n / s:,.0f} | {tok['chars'] / s:,.0f} | "
            f"{shown} |"
        )
    train_s, train_runs = tok["train_seconds"]
    lines += [
        "",
        f"Training the BPE on the training blocks: {train_s:.3f} s (median; runs "
        + ", ".join(f"{r:.3f}" for r in train_runs)
        + ").",
        "",
        "## Training one epoch (capped), validation off",
        "",
        "| tokenizer | data path | vocab | batches | s (median) | samples/s | tokens/s | "
        "chars of text/s | runs (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in KINDS:
        row = fit[kind]
        s = statistics.median(row["seconds"])
        samples = row["batches"] * row["batch_size"]
        tokens = samples * row["context"]
        chars = tokens * tok["chars"] / tok["tokens"][kind]
        shown = ", ".join(f"{r:.3f}" for r in row["seconds"])
        lines.append(
            f"| {kind} | {row['path']} | {row['vocab']} | {row['batches']} | {s:.3f} | "
            f"{samples / s:,.0f} | {tokens / s:,.0f} | {chars / s:,.0f} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-chars", type=int, default=300_000, help="of the built-in corpus")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--batches", type=int, default=30, help="training batches per epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_text.md"))
    args = p.parse_args(argv)

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plexa-data-text-") as root:
        os.environ["PLEXA_RUNS_DIR"] = root  # the token cache: never the checkout
        tok = tokenizing(args.max_chars, args.vocab_size, args.repeats)
        pipelines = specs(args.batches, args.max_chars, args.vocab_size)
        fit: dict[str, Any] = {}
        for kind, spec in pipelines.items():
            data = assemble(spec).data  # builds the bpe cache, untimed
            fit[kind] = {
                "seconds": [],
                "batch_size": spec.train.batch_size,
                "context": spec.data.params["context"],
                "vocab": data.spec.num_classes,
                "path": type(data.train).__name__ + (" (memmap)" if kind == "bpe" else ""),
            }
        for rep in range(args.repeats):
            for kind, spec in pipelines.items():
                seconds, batches = train_once(spec, root)
                fit[kind]["seconds"].append(seconds)
                fit[kind]["batches"] = batches
            print(
                f"run {rep + 1}/{args.repeats}: "
                + ", ".join(f"{k} {v['seconds'][-1]:.3f}s" for k, v in fit.items()),
                flush=True,
            )
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "corpus": f"built-in (standard-library docstrings), {tok['chars']} characters",
        "pipelines": "text-charlm.yaml, text-bpe.yaml",
        "torch": torch.__version__,
        "lightning": L.__version__,
        "tokenizers": tokenizers.__version__,
        "machine cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average before / after": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        "repeats": str(args.repeats),
        "benchmark wall time": f"{time.perf_counter() - t0:.0f} s",
    }
    report = _markdown(meta, tok, fit)
    print()
    print(report, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
