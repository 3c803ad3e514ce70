"""Where a run's files live and the names plexa gives them, in one place: the runs folder, a
run's folder, its checkpoints and its ONNX export, and the MLflow tag that points at the folder.

Nothing here imports MLflow, torch or Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

RUNS_DIR_ENV = "PLEXA_RUNS_DIR"  # the runs folder; default ./plexa-runs
RUN_DIR_ENV = "PLEXA_RUN_DIR"  # tells DDP ranks > 0 where rank zero keeps checkpoints
RUN_DIR_TAG = "plexa.run_dir"
CHECKPOINTS = "checkpoints"  # a run folder's checkpoints, and their folder among its artifacts
EXPORT = "export"
MODEL_FILE = "model.onnx"


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV, "plexa-runs")).absolute()


def run_dir(run_id: str) -> Path:
    return runs_root() / run_id


def checkpoint(folder: Path, name: str) -> Path:
    """`best` or `last` in a run (or trial) folder."""
    return folder / CHECKPOINTS / f"{name}.ckpt"


def export_file(folder: Path) -> Path:
    return folder / EXPORT / MODEL_FILE


def exported_onnx(run: Any) -> Path | None:
    """The ONNX export of an MLflow run, when its folder is on this machine."""
    folder = run.data.tags.get(RUN_DIR_TAG)
    if not folder:
        return None
    path = export_file(Path(folder))
    return path if path.is_file() else None


def global_rank() -> int:
    """This process's rank; DDP worker processes are launched with these set."""
    for var in ("RANK", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0
