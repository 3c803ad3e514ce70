"""Shared fixtures: every test gets its own working directory and MLflow store, and no test
reads or writes what lies in the repository's working tree (a demo's store, `mlruns/`,
`plexa-runs/`, a compose `.env`)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
BIN = Path(sys.executable).parent

# what a checkout holds that is neither source nor a test's doing: the venv, caches, the build
_OWN = (".venv/", ".pytest_cache/", ".ruff_cache/", ".hypothesis/", ".mypy_cache/")
# environment that would point a test at a user's store, cluster or server instead of its own
_LEAKY_ENV = (
    "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
    "PLEXA_RUNS_DIR", "PLEXA_RUN_DIR", "RAY_ADDRESS", "PLEXA_SERVE_TOKEN", "PLEXA_DEBUG",
    "PLEXA_CACHE_DIR", "XDG_CACHE_HOME",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Before any fixture (module-scoped ones included) runs: a scratch store and runs folder,
    so nothing in the repository is read or written by default (the cwd moves there too, in
    `scratch_cwd`, once the tests are collected)."""
    scratch = Path(tempfile.mkdtemp(prefix="plexa-tests-"))
    for name in _LEAKY_ENV:
        os.environ.pop(name, None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
    os.environ["PLEXA_RUNS_DIR"] = str(scratch / "plexa-runs")
    # the digits scorer generative runs report against: trained once per test session, in a
    # folder both xdist workers share (written atomically), never the user's ~/.cache
    session = getattr(config, "workerinput", {}).get("testrunuid", f"solo-{os.getpid()}")
    os.environ["PLEXA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"plexa-tests-{session}")
    # worker processes (Ray's) unpickle callbacks defined in tests/ by module name
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    config.stash[_SCRATCH] = scratch


_SCRATCH = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def scratch_cwd(request: pytest.FixtureRequest) -> Iterator[None]:
    """The first fixture of the session: every later one runs in the scratch folder."""
    previous = Path.cwd()
    os.chdir(request.config.stash[_SCRATCH])
    yield
    os.chdir(previous)


# `make test` runs two xdist workers, each taking whole files (a file's module fixtures are
# built once); the files that start Ray form two groups of about equal length, a group's files
# one after the other in one worker, so at most two Ray instances run at once
_RAY_GROUPS = {
    "test_mlflow_server.py": "ray-a", "test_ray_cluster.py": "ray-a",
    "test_serving_ray.py": "ray-a",
    "test_ray.py": "ray-b", "test_sweep.py": "ray-b", "test_federated.py": "ray-b",
    "test_ray_data.py": "ray-b",
}  # fmt: skip


def _tree_outside_git() -> frozenset[str]:
    """Untracked and ignored entries of the checkout (without the venv and caches), each with
    its files' newest mtime: a test that adds to `mlruns/` changes its entry too."""
    done = subprocess.run(
        ["git", "status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=normal"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    entries = set()
    for record in filter(None, done.stdout.split("\0")):
        path = record[3:]
        if path.startswith(_OWN) or "__pycache__" in path or ".egg-info" in path:
            continue
        target = REPO / path
        files = [target] if target.is_file() else [f for f in target.rglob("*") if f.is_file()]
        newest = max((f.stat().st_mtime_ns for f in files if f.exists()), default=0)
        entries.add(f"{record[:2]} {path} {newest}")
    return frozenset(entries)


@pytest.fixture(scope="module", autouse=True)
def repository_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test file that wrote into the checkout (a test's own tmp folder is the place).
    Per file, not per test: `git status` costs a few hundred milliseconds here, and under
    xdist the writer may be a test of the file that runs beside it anyway."""
    if not (REPO / ".git").exists():  # an unpacked archive: nothing to compare against
        yield
        return
    before = _tree_outside_git()
    yield
    after = _tree_outside_git()
    if after != before:
        changed = sorted({e.split(" ")[1] for e in after ^ before})
        pytest.fail(f"the repository changed during {request.node.nodeid}: {', '.join(changed)}")


@functools.cache
def _empty_store() -> Path:
    """An empty MLflow sqlite store with its schema: creating one runs MLflow's migrations,
    seconds on this machine, so each test's store is a copy of this one."""
    import mlflow

    path = Path(tempfile.mkdtemp(prefix="plexa-store-")) / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd with its own (empty) sqlite MLflow store and run folder, as a new user
    would have."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(_empty_store(), tmp_path / "mlflow.db")
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
    """Ray's tests share one xdist group; GPU tests skip cleanly where there is no CUDA device
    (lightning-hydra-template's RunIf)."""
    for item in items:
        group = _RAY_GROUPS.get(item.path.name, item.path.name)
        if "smoke[digits-federated]" in item.nodeid or "smoke[digits-nas]" in item.nodeid:
            group = "ray-b"
        item.add_marker(pytest.mark.xdist_group(group))
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
