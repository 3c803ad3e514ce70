"""Progress as a stream of structured events: an epoch saved, a federated round evaluated, a
sweep trial ended. Runners emit them; the terminal view, `plexa submit`'s view (the job prints
them as JSON lines, the submitter parses them back) and the MLflow sink all consume the same
objects, so no consumer parses another's human-readable text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

Kind = Literal["epoch", "round", "trial"]
EVENTS_ENV = "PLEXA_EVENTS"  # "json": `plexa run` prints events as JSON lines (a Ray job)
JSON_PREFIX = "plexa-event "


@dataclass(frozen=True)
class Event:
    """One unit of progress. `index` counts from 0 (round 1 is index 0); `total` is how many
    are planned."""

    kind: Kind
    index: int
    total: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""  # a trial's outcome: "finished", "stopped", "failed"
    label: str = ""  # a trial's id

    def to_json(self) -> str:
        return JSON_PREFIX + json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_line(line: str) -> Event | None:
        """The event a JSON line carries, or None for any other line."""
        start = line.find(JSON_PREFIX)
        if start < 0:
            return None
        try:
            return Event(**json.loads(line[start + len(JSON_PREFIX) :]))
        except (ValueError, TypeError):
            return None


Sink = Callable[[Event], None]

_TRIAL_KEYS = ("val/acc", "val/loss", "objective", "latency_ms", "params")


def render(event: Event) -> str:
    """The one line the terminal shows for an event."""
    of = f"/{event.total}" if event.total else ""
    m = event.metrics
    if event.kind == "epoch":
        shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith(("train/", "val/")))
        lr = f"  lr {m['lr']:.2e}" if "lr" in m else ""
        seconds = f"  {m['epoch_seconds']:.2f}s" if "epoch_seconds" in m else ""
        return f"epoch {event.index + 1:>3}{of}  {shown}{lr}{seconds}"
    if event.kind == "round":
        shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("server/"))
        clients = ""
        if "clients/sampled" in m:
            clients = (
                f"  clients {m.get('clients/replied', 0):.0f}/{m['clients/sampled']:.0f}"
                f" ({m.get('clients/failed', 0):.0f} failed)  {m.get('round_seconds', 0):.2f}s"
            )
        return f"round {event.index + 1:>3}{of}  {shown}{clients}"
    shown = "  ".join(f"{k} {m[k]:.4g}" for k in _TRIAL_KEYS if k in m)
    if event.note == "failed":
        return f"trial {event.label} failed (recorded as FAILED in MLflow)"
    epochs = int(m.get("epochs", 0))
    return f"trial {event.label} {event.note} after {epochs} epochs  {shown}".rstrip()


def printer(write: Callable[[str], None]) -> Sink:
    """A sink that writes each event's line (or, in a Ray job, its JSON line)."""
    import os

    as_json = os.environ.get(EVENTS_ENV) == "json"

    def show(event: Event) -> None:
        write(event.to_json() if as_json else render(event))

    return show
