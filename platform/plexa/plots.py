"""PNG figures logged with a run: learning curves and a confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def curves(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """One panel per metric name (loss, acc, ...), train and val drawn together."""
    names = sorted({key.split("/", 1)[1] for key in history if "/" in key})
    fig = _figure(4.2 * max(1, len(names)), 3.2)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        for stage in ("train", "val"):
            points = history.get(f"{stage}/{name}")
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=3, label=stage)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> Figure:
    import numpy as np

    k = len(class_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    size = max(3.5, 0.45 * k + 1.5)
    fig = _figure(size + 0.8, size)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), class_names, rotation=45 if k > 6 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (accuracy {np.trace(matrix) / max(1, matrix.sum()):.3f})")
    limit = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > limit else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    return fig


def partition(counts: ArrayLike, class_names: Sequence[str]) -> Figure:
    """Federated partition: stacked bars of label counts per client (rows of `counts`)."""
    import numpy as np

    matrix = np.asarray(counts)
    clients = np.arange(len(matrix))
    fig = _figure(max(4.0, 0.35 * len(matrix) + 2.0), 3.4)
    ax = fig.subplots()
    bottom = np.zeros(len(matrix))
    for k, name in enumerate(class_names):
        ax.bar(clients, matrix[:, k], bottom=bottom, label=name, width=0.8)
        bottom += matrix[:, k]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training samples")
    ax.set_title("label counts per client")
    if len(class_names) <= 20:
        ax.legend(fontsize=7, ncols=2, title="label", loc="upper left", bbox_to_anchor=(1, 1))
    return fig
