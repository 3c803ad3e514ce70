"""Streaming images: plexa's `images` plugin through the core's loader against a hand-written
Pillow Dataset and a plain torch DataLoader doing the same work.

Both read the same files (the training split of N generated JPEGs, small RGB images in ten
class folders) with the same batch size and loader workers, and do the same per-sample work:
Pillow decode to RGB, random crop with zero padding, horizontal flip, brightness / contrast /
saturation jitter and per-channel normalisation, then the default collate.

- plexa: `Images.load` (listing only) then `plexa.streaming.StreamData`'s training loader, as
  a run gets it (EpochOrder sampler, the core's collate);
- hand-written: a `Dataset` over the same paths whose `__getitem__` a user would write
  (Python's `random`, which torch reseeds in each worker), `DataLoader(shuffle=True)`.

One epoch is timed from creating the loader's iterator to the last batch (worker start-up
included, as every epoch of a loader without persistent workers pays it). Runs are
interleaved (plexa, hand, plexa, hand, ...); each figure is the median of the repeats.

    .venv/bin/python benchmarks/data_images.py [N] [--workers 2] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from plexa.config import LoaderSpec
from plexa.plugins import DataSplits, datasets
from plexa.quiet import quiet_libraries
from plexa.streaming import StreamData

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.25)
PADDING, FLIP, JITTER = 4, 0.5, 0.2
LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def make_images(root: Path, n: int, side: int) -> float:
    """N seeded JPEGs (a colour gradient plus noise per image) in class folders; seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        base = ramp[None, :, None] * colour + ramp[:, None, None] * (255 - colour) * 0.5
        noisy = base + rng.normal(0, 20, (side, side, 3))
        pixels = np.clip(noisy, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{i % CLASSES}" / f"{i:06d}.jpg", quality=90)
    return time.perf_counter() - start


class HandWritten(Dataset):
    """What a user writes without plexa: decode, augment, normalise, per sample."""

    def __init__(self, paths: list[str], labels: np.ndarray, side: int) -> None:
        self.paths, self.labels, self.side = paths, labels, side
        self.mean = np.asarray(MEAN, np.float32)[:, None, None]
        self.std = np.asarray(STD, np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
            if img.size != (self.side, self.side):
                img = img.resize((self.side, self.side), Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        p = PADDING
        padded = np.pad(x, ((0, 0), (p, p), (p, p)))
        top, left = random.randint(0, 2 * p), random.randint(0, 2 * p)
        x = padded[:, top : top + self.side, left : left + self.side]
        if random.random() < FLIP:
            x = x[:, :, ::-1]
        x = np.clip(x * random.uniform(1 - JITTER, 1 + JITTER), 0, 1)
        mean = float(np.tensordot(LUMA, x, axes=1).mean())
        x = np.clip((x - mean) * random.uniform(1 - JITTER, 1 + JITTER) + mean, 0, 1)
        gray = np.tensordot(LUMA, x, axes=1)[None]
        x = np.clip((x - gray) * random.uniform(1 - JITTER, 1 + JITTER) + gray, 0, 1)
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), int(self.labels[i])


def plexa_splits(root: Path, side: int) -> DataSplits:
    params = {
        "path": str(root),
        "size": [side, side],
        "mode": "rgb",
        "augment": {
            "crop": {"padding": PADDING},
            "flip": FLIP,
            "jitter": {"brightness": JITTER, "contrast": JITTER, "saturation": JITTER},
        },
        "normalise": {"mean": list(MEAN), "std": list(STD)},
    }
    return datasets.create("images").load(datasets.get("images").Config(**params), seed=0)


def epoch(loader: Any) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - start, n


def run_plexa(data: DataSplits, batch: int, workers: int) -> tuple[float, int]:
    module = StreamData(data, batch, seed=0, limit=None, loader=LoaderSpec(workers=workers))
    # the core's loader asks its trainer for rank, world size, device and epoch
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=1)
    return epoch(module.train_dataloader())


def run_hand(dataset: HandWritten, batch: int, workers: int) -> tuple[float, int]:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    return epoch(loader)


def _markdown(meta: dict[str, str], rows: list[tuple[str, float, list[float]]]) -> str:
    lines = ["# Streaming images: plexa's `images` against a hand-written loader", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "One epoch of the training split each run (loader start-up included); the figure is",
        "the median over the repeats, runs interleaved.",
        "",
        "| contender | images/s (median) | vs hand-written | per-run images/s |",
        "|---|---:|---:|---|",
    ]
    hand = rows[1][1]
    for name, median, runs in rows:
        per_run = ", ".join(f"{r:.0f}" for r in runs)
        lines.append(f"| {name} | {median:.0f} | {median / hand:.2f}x | {per_run} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="?", type=int, default=50_000, help="JPEGs to generate")
    p.add_argument("--side", type=int, default=32, help="image width and height")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_images.md"))
    args = p.parse_args(argv)

    quiet_libraries()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plexa-images-") as tmp:
        root = Path(tmp) / "images"
        made = make_images(root, args.images, args.side)
        print(f"wrote {args.images} JPEGs in {made:.1f} s", flush=True)
        start = time.perf_counter()
        data = plexa_splits(root, args.side)
        listed = time.perf_counter() - start
        train = data.train.dataset
        paths = [train.paths[i] for i in range(len(train))]
        hand = HandWritten(paths, np.asarray(data.train.labels), args.side)
        rates: dict[str, list[float]] = {"plexa images": [], "hand-written": []}
        for rep in range(args.repeats):
            for name, fn in (("plexa images", run_plexa), ("hand-written", run_hand)):
                seconds, n = fn(data if fn is run_plexa else hand, args.batch_size, args.workers)
                assert n == len(paths), (name, n, len(paths))
                rates[name].append(n / seconds)
            print(
                f"run {rep + 1}/{args.repeats}: "
                + ", ".join(f"{k} {v[-1]:.0f} images/s" for k, v in rates.items()),
                flush=True,
            )
    medians = {k: statistics.median(v) for k, v in rates.items()}
    ratio = medians["plexa images"] / medians["hand-written"]
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "images": f"{args.images} JPEGs {args.side}x{args.side} RGB, {CLASSES} class folders",
        "training split read per epoch": str(len(paths)),
        "work per sample": "decode, pad-4 crop, flip 0.5, jitter 0.2 x3, normalise",
        "loader workers": str(args.workers),
        "batch size": str(args.batch_size),
        "repeats": str(args.repeats),
        "plexa load (list files, split)": f"{listed:.2f} s",
        "torch / Pillow": f"{torch.__version__} / {PIL.__version__}",
        "machine cores": str(os.cpu_count()),
        "load average before / after": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        "ratio plexa / hand-written (median)": f"{ratio:.2f}x",
    }
    rows = [(k, medians[k], rates[k]) for k in rates]
    text = _markdown(meta, rows)
    print()
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
