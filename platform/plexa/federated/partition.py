"""Splitting a training set over federated clients, done by the core for every data plugin.

Only the labels are needed: `iid` shuffles and deals, `dirichlet` draws each label's share per
client from Dir(alpha) (small alpha: each client sees few labels), `shards` gives each client
shards of `labels_per_client` labels. Every scheme is a pure function of (labels, seed), so the
server, the clients and the partition plot all see the same split without passing indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plexa.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from plexa.config import PartitionSpec


class PartitionError(UserError, ValueError):
    """The training set cannot be split as asked (too few samples or labels)."""


def partition(labels: np.ndarray, clients: int, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Indices into the training set, one sorted array per client; together they cover it once.

    Every client gets at least one sample (a client without data cannot report a weight).
    """
    import numpy as np

    n = len(labels)
    if n < clients:
        raise PartitionError(f"{n} training samples cannot be split over {clients} clients")
    rng = np.random.default_rng(seed)
    if spec.scheme == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif spec.scheme == "dirichlet":
        parts = _dirichlet(np.asarray(labels), clients, spec.alpha, rng)
    else:
        parts = _shards(np.asarray(labels), clients, spec.labels_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each label's samples are spread over clients in Dir(alpha) proportions; a client left
    empty takes one sample from the largest client, so nobody is idle."""
    import numpy as np

    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    for client in range(clients):
        if not parts[client]:
            donor = max(range(clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop())
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _shards(
    labels: np.ndarray, clients: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into clients * k shards, deal k shards to each client (McMahan et
    al.'s pathological non-IID split): most clients then hold about k labels."""
    import numpy as np

    shards = clients * per_client
    if shards > len(labels):
        raise PartitionError(
            f"{clients} clients x {per_client} labels_per_client = {shards} shards, more than "
            f"the {len(labels)} training samples"
        )
    order = np.lexsort((rng.random(len(labels)), labels))  # by label, shuffled within
    pieces = np.array_split(order, shards)
    dealt = rng.permutation(shards).reshape(clients, per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in dealt]


def label_counts(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> np.ndarray:
    """clients x classes matrix of sample counts: what the partition plot shows."""
    import numpy as np

    return np.stack([np.bincount(labels[p], minlength=classes) for p in parts])
