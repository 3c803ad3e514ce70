"""What each split of a run was, recorded as MLflow dataset inputs (`mlflow.data`): source,
schema, row count and a digest per split, so two runs on the same data show the same digest in
the MLflow UI and a changed file a different one. Nothing is read for it but what a split holds
in memory already: a streamed split is described by its first sample and its labels (of a Ray
Data split, its first row and its label column)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from plexa.plugins import DataSplits, Split, Stream

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

CONTEXT_TAG = "mlflow.data.context"  # MLflow's own tag for a dataset's role in a run


def inputs(plugin: str, data: DataSplits) -> list[DatasetInput]:
    """One dataset input per split, its context (train, val, test) tagged as MLflow does."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type, source = _source(plugin, data)
    found = []
    for context in ("train", "val", "test"):
        split = getattr(data, context)
        x, y = _first(split)
        schema = {"features": _spec(x), "targets": _spec(y)}
        entity = Dataset(
            name=f"{plugin}-{context}",
            digest=_digest(split, source),
            source_type=source_type,
            source=source,
            schema=json.dumps({"mlflow_tensorspec": schema}),
            profile=json.dumps({"num_rows": len(split), "streamed": isinstance(split, Stream)}),
        )
        found.append(DatasetInput(entity, [InputTag(CONTEXT_TAG, context)]))
    return found


def _source(plugin: str, data: DataSplits) -> tuple[str, str]:
    """Where the data came from: the files a plugin read (`DataSplits.source`), else the plugin."""
    if data.source:
        return "local", json.dumps({"uri": data.source})
    return "code", json.dumps({"tags": {"plexa.data.plugin": plugin}})


def _first(split: Split | Stream) -> tuple[np.ndarray, np.ndarray]:
    from plexa.streaming import first

    return first(split, 1)


def _spec(array: np.ndarray) -> str:
    """A tensor spec as MLflow writes one: the dtype and the shape, -1 for the rows."""
    return json.dumps([{"type": "tensor", "tensor-spec": {
        "dtype": str(array.dtype), "shape": [-1, *array.shape[1:]]}}])  # fmt: skip


def _digest(split: Split | Stream, source: str) -> str:
    """Eight hex digits over the split's size, labels and (in memory) its first and last rows."""
    sha = hashlib.sha256(source.encode())
    sha.update(str(len(split)).encode())
    from plexa.streaming import labels as targets

    labels = targets(split)
    if labels is not None:
        sha.update(np.ascontiguousarray(labels).tobytes())
    if isinstance(split, Split):
        rows: Any = np.asarray(split.x)
        for part in (rows[:1000], rows[-1000:]):
            sha.update(np.ascontiguousarray(part).tobytes())
    return sha.hexdigest()[:8]
