"""Runners turn a validated pipeline into a trained model. Each has one `run(...)` and all of
them return the same `RunResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L


class RunInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped training; the last checkpoint is kept for `--resume`."""

    def __init__(self, run_id: str | None, last_checkpoint: Path | None) -> None:
        self.run_id, self.last_checkpoint = run_id, last_checkpoint
        super().__init__(f"run {run_id} interrupted; last checkpoint: {last_checkpoint}")


@dataclass
class Trained:
    """What a runner's training leaves: test metrics and checkpoints (here so that the Ray
    driver need not import torch and Lightning before its workers start)."""

    module: L.LightningModule | None  # None where training ran in other processes (Ray)
    metrics: dict[str, float]
    best_checkpoint: Path | None
    last_checkpoint: Path | None


@dataclass
class RunResult:
    pipeline: str
    run_id: str | None
    status: str  # FINISHED, KILLED
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics and best val
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    export: Any = None  # plexa.export.ExportResult when exported
    seconds: float = 0.0
    tracking_uri: str | None = None
    model: Any = field(default=None, repr=False)  # the trained LightningModule, in process
