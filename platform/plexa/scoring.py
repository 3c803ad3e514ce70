"""A measured quality bar for digit generators: an Inception-score analogue.

A digits classifier, trained by plexa itself (the `cnn` plugin on the `digits` data, the same
code path as `plexa run`), reads the generated images. Good samples are each clearly one digit
(confident, peaked p(y|x)) and together cover every digit (a flat marginal p(y)); the score
exp(E_x KL(p(y|x) || p(y))) is 1 for noise or a single repeated digit and 10 for sharp,
balanced digits. The mean top-class confidence and the number of digits covered are reported
alongside, since one number can hide a collapse onto a few classes.

The classifier is trained once per seed (a few seconds) and cached as a state dict under
`PLEXA_CACHE_DIR` (default: `$XDG_CACHE_HOME/plexa`, else `~/.cache/plexa`), keyed by seed and
by its pipeline, so a changed recipe is trained afresh; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

CACHE_ENV = "PLEXA_CACHE_DIR"
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
# a digit counts as covered when it is the top class of at least this share of the samples
# (a fifth of its share under a uniform spread)
MIN_SHARE = 0.02

SCORER_PIPELINE: dict[str, Any] = {
    "name": "digits-scorer",
    "data": {"plugin": "digits", "params": {"val_fraction": 0.15, "test_fraction": 0.15}},
    "model": {"plugin": "cnn", "params": {"channels": [32, 64], "dropout": 0.1}},
    "train": {
        "max_epochs": 15,
        "batch_size": 64,
        "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
    },
    "compute": {"runner": "local", "accelerator": "cpu", "devices": 1},
    "export": {"onnx": False},
}


@dataclass(frozen=True)
class Score:
    score: float  # exp(E KL(p(y|x) || p(y))), 1..10
    confidence: float  # mean top-class probability
    classes_covered: int  # digits that are the top class of at least MIN_SHARE of samples
    samples: int

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/score": self.score,
            f"{prefix}/confidence": self.confidence,
            f"{prefix}/classes_covered": float(self.classes_covered),
        }


def from_probabilities(probs: np.ndarray, min_share: float = MIN_SHARE) -> Score:
    """The score of a batch of class distributions p(y|x), one row per sample."""
    import numpy as np

    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    p = p / p.sum(1, keepdims=True)
    marginal = p.mean(0)
    kl = (p * (np.log(p) - np.log(marginal))).sum(1)
    top = p.argmax(1)
    shares = np.bincount(top, minlength=p.shape[1]) / len(p)
    return Score(
        score=float(np.exp(kl.mean())),
        confidence=float(p.max(1).mean()),
        classes_covered=int((shares >= min_share).sum()),
        samples=len(p),
    )


def score(images: Any, scorer: nn.Module, min_share: float = MIN_SHARE) -> Score:
    """Score images (N, 1, 8, 8) with values in [0, 1] (digits' own scale) with `scorer`."""
    import torch

    x = torch.as_tensor(images, dtype=torch.float32)
    if tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"the digits scorer reads (N, 1, 8, 8) images, got {tuple(x.shape)}")
    device = next(scorer.parameters()).device
    was_training = scorer.training
    scorer.eval()
    with torch.no_grad():
        probs = torch.cat([scorer(b.to(device)).softmax(1).cpu() for b in x.split(1024)])
    scorer.train(was_training)
    return from_probabilities(probs.numpy(), min_share)


# --------------------------------------------------------------------------- the scorer


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "plexa"


def digits_scorer(seed: int = 0) -> nn.Module:
    """The digits classifier for `seed`: loaded from the cache, else trained by plexa now."""
    import torch

    from plexa.assembly import assemble
    from plexa.config import validate

    spec = validate({**SCORER_PIPELINE, "train": {**SCORER_PIPELINE["train"], "seed": seed}})
    recipe = hashlib.sha256(json.dumps(SCORER_PIPELINE, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / f"digits-scorer-{recipe[:12]}-seed{seed}.pt"
    with _preserved_rng(), _trained_once(path):
        built = assemble(spec)
        data, net, module = built.data, built.net, built.module
        if path.exists():
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            _train(spec, data, module, path)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def _train(spec: Any, data: Any, module: Any, path: Path) -> None:
    """plexa's own local training (best checkpoint on val accuracy), then a cached state dict."""
    import tempfile

    import torch

    from plexa.assembly import load_weights
    from plexa.quiet import quiet_libraries
    from plexa.training import fit_and_test

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        trained = fit_and_test(
            spec, data, module, Path(tmp), monitor=module.monitor, accelerator="cpu", devices=1
        )
        load_weights(module, trained.best_checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    torch.save(module.net.state_dict(), partial)
    partial.replace(path)  # atomic: a concurrent run never reads half a file


@contextlib.contextmanager
def _trained_once(path: Path) -> Iterator[None]:
    """Holds a lock beside the cached scorer: runs that start together train it once, the
    others wait and load it (where there is no `fcntl`, each may train its own)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Training the scorer seeds every generator; the caller's random streams go on unchanged,
    so a run is the same whether the scorer came from the cache or was trained just now."""
    import random

    import numpy as np
    import torch

    py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    seed_env = os.environ.get("PL_GLOBAL_SEED")
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(th)
        if seed_env is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed_env
