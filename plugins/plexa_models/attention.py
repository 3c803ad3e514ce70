"""Which positions each position of a sequence may attend to: full, causal, and the sparse
local and strided patterns of Child et al. (2019), "Generating Long Sequences with Sparse
Transformers".

A pattern is a boolean (T, T) matrix, True where query position i may read key position j.
The sparse patterns are causal (they come from autoregressive models): `local` reads the last
`window` positions; `strided` also reads every `stride`-th position before that, so two layers
connect any position to any earlier one while each row holds about window + T / stride keys.
Here they are masks over dense attention, which limits what a position sees, not the compute.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Pattern = Literal["full", "causal", "local", "strided"]
PATTERNS: tuple[str, ...] = ("full", "causal", "local", "strided")
#: the patterns under which no position reads a later one (what a language model needs)
CAUSAL_PATTERNS: frozenset[str] = frozenset({"causal", "local", "strided"})


def allowed(pattern: str, length: int, window: int = 8, stride: int = 8) -> np.ndarray:
    """The (length, length) mask: `allowed(...)[i, j]` says whether position i sees j."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown attention pattern '{pattern}'; choose one of {PATTERNS}")
    if length < 1 or window < 1 or stride < 1:
        raise ValueError("length, window and stride must be at least 1")
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    back = i - j  # how far key j lies behind query i
    if pattern == "full":
        return np.ones((length, length), dtype=bool)
    if pattern == "causal":
        return back >= 0
    local = (back >= 0) & (back < window)
    if pattern == "local":
        return local
    return local | ((back >= 0) & (back % stride == 0))


def reachable(mask: np.ndarray, layers: int) -> np.ndarray:
    """What position i can depend on after `layers` attention layers (residuals included)."""
    step = mask | np.eye(len(mask), dtype=bool)
    out = np.eye(len(mask), dtype=bool)
    for _ in range(layers):
        out = (out.astype(np.int64) @ step.astype(np.int64)) > 0
    return out
