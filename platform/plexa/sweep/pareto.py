"""The trade-off a hardware-aware search exposes: the trials no other trial beats on both the
metric and the ONNX Runtime latency, as a PNG and as a Markdown table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class TrialRow:
    """One trial as the sweep reports it."""

    trial_id: str
    status: str  # FINISHED, FAILED, KILLED (early-stopped or interrupted)
    values: dict[str, Any] = field(default_factory=dict)  # the sampled pipeline values
    metric: float | None = None
    latency_ms: float | None = None
    params: int | None = None
    objective: float | None = None
    epochs: int = 0
    run_id: str | None = None
    error: str | None = None


def front(rows: Sequence[TrialRow], mode: str) -> list[TrialRow]:
    """Rows not dominated on (metric, latency): nothing else is at least as good on both and
    better on one. Sorted by latency."""
    sign = 1.0 if mode == "max" else -1.0
    measured = [r for r in rows if r.metric is not None and r.latency_ms is not None]

    def dominates(a: TrialRow, b: TrialRow) -> bool:
        am, bm = sign * a.metric, sign * b.metric  # type: ignore[operator]
        al, bl = a.latency_ms, b.latency_ms
        return am >= bm and al <= bl and (am > bm or al < bl)  # type: ignore[operator]

    kept = [r for r in measured if not any(dominates(o, r) for o in measured if o is not r)]
    return sorted(kept, key=lambda r: r.latency_ms)  # type: ignore[arg-type,return-value]


def _points(rows: Sequence[TrialRow]) -> tuple[list[float], list[float]]:
    """(latencies, metrics) of the rows that have both, in order."""
    pairs = [
        (r.latency_ms, r.metric) for r in rows if r.latency_ms is not None and r.metric is not None
    ]
    return [x for x, _ in pairs], [y for _, y in pairs]


def figure(rows: Sequence[TrialRow], metric: str, mode: str, best: str | None) -> Figure:
    """Every measured trial as a point, the front as a line, the chosen trial circled."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    measured = [r for r in rows if r.metric is not None and r.latency_ms is not None]
    on_front = front(rows, mode)
    latencies, metrics = _points(measured)
    ax.scatter(latencies, metrics, color="0.6", s=18, label="trials")
    ax.plot(*_points(on_front), marker="o", color="tab:blue", label="Pareto front")
    for r, latency, value in zip(measured, latencies, metrics, strict=True):
        if r.trial_id == best:
            ax.scatter(
                [latency],
                [value],
                s=120,
                facecolors="none",
                edgecolors="tab:red",
                label="best trial",
            )
    ax.set_xlabel("ONNX Runtime latency, batch 1, median (ms)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def table(rows: Sequence[TrialRow], metric: str, mode: str, best: str | None) -> str:
    """A Markdown table of every trial, best first; `*` marks the Pareto front."""
    on_front = {r.trial_id for r in front(rows, mode)}
    keys = sorted({k for r in rows for k in r.values})
    sign = -1.0 if mode == "max" else 1.0

    def order(r: TrialRow) -> tuple[int, float]:
        score = r.objective if r.objective is not None else r.metric
        return (0, sign * score) if score is not None else (1, 0.0)

    header = ["trial", "status", "epochs", metric, "latency ms", "params", "objective", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=order):
        mark = " **best**" if r.trial_id == best else ""
        mark += " *" if r.trial_id in on_front else ""
        cells = [
            f"{r.trial_id}{mark}",
            r.status,
            str(r.epochs),
            "" if r.metric is None else f"{r.metric:.4f}",
            "" if r.latency_ms is None else f"{r.latency_ms:.4f}",
            "" if r.params is None else f"{r.params:,}",
            "" if r.objective is None else f"{r.objective:.4f}",
            *(_short(r.values.get(k, "")) for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
