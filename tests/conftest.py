"""Shared fixtures: every test gets its own working directory and MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
BIN = Path(sys.executable).parent


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd with its own sqlite MLflow store and run folder, as a new user would have."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # an earlier in-process run may have set another store
    # and another experiment, which mlflow.set_experiment keeps in the process and environment
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("PLEXA_RUNS_DIR", str(tmp_path / "plexa-runs"))
    monkeypatch.delenv("PLEXA_RUN_DIR", raising=False)
    return tmp_path


def plexa(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the installed `plexa` command the way a user does."""
    return subprocess.run(
        [str(BIN / "plexa"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly where there is no CUDA device (lightning-hydra-template's RunIf)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
