"""MLflow: one run per pipeline, logged from rank zero only.

Metrics go through MLflow's asynchronous logging so training never waits on the store; the
queue is flushed before the run is closed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plexa
from plexa.config import PipelineSpec
from plexa.errors import NotFoundError, UnreachableError
from plexa.plugins import architectures, datasets

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.exceptions import MlflowException

PIPELINE_ARTIFACT = "pipeline.yaml"
# MLflow's codes for an HTTP 401 or 403
_REFUSED = ("UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED")


class RunNotFoundError(NotFoundError, LookupError):
    pass


def resolve_uri(explicit: str | None = None) -> str:
    """`tracking.uri`, else MLFLOW_TRACKING_URI, else MLflow's default (sqlite in the cwd)."""
    import mlflow

    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return mlflow.get_tracking_uri()


def client(uri: str | None = None) -> MlflowClient:
    """A client for the store, checked first: a server that does not answer is an
    UnreachableError now instead of after MLflow's minutes of retries, and a sqlite file in a
    folder that does not exist a NotFoundError instead of SQLAlchemy's traceback."""
    import mlflow

    resolved = resolve_uri(uri)
    if resolved.startswith(("http://", "https://")):
        require_answer(resolved)
    elif resolved.startswith("sqlite:///"):
        folder = Path(resolved.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise NotFoundError(f"no folder {folder} for the MLflow store {resolved}")
    return mlflow.MlflowClient(resolved)


@functools.cache  # only an answer is remembered: a raise is not cached
def require_answer(uri: str) -> None:
    """An UnreachableError unless the server at `uri` answers HTTP at all (any status)."""
    import requests

    from plexa.tracking_failover import PROBE_TIMEOUT

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT)
    except requests.exceptions.SSLError:
        return  # it answered; MLflow's own TLS settings (a CA file, insecure) decide the rest
    except requests.RequestException as exc:
        raise UnreachableError(
            f"the MLflow server at {uri} did not answer ({type(exc).__name__}): is it running, "
            "and is that its address?"
        ) from None


def raise_if_refused(exc: MlflowException, uri: str) -> None:
    """An UnreachableError when the server refused the request's credentials (not a missing
    run: the user must fix the credentials, not the id)."""
    if exc.error_code in _REFUSED:
        raise UnreachableError(
            f"the MLflow server at {uri} refused the credentials ({exc.error_code}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        ) from exc


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def tags_for(spec: PipelineSpec) -> dict[str, str]:
    arch_dist, arch_version = architectures.source(spec.model.plugin)
    data_dist, data_version = datasets.source(spec.data.plugin)
    tags = {
        "plexa.version": plexa.__version__,
        "plexa.pipeline": spec.name,
        "plexa.runner": spec.compute.runner,
        "plexa.architecture": spec.model.plugin,
        "plexa.architecture.distribution": arch_dist,
        "plexa.architecture.version": arch_version,
        "plexa.data": spec.data.plugin,
        "plexa.data.distribution": data_dist,
        "plexa.data.version": data_version,
    }
    commit = _git_commit()
    if commit:
        tags["plexa.git_commit"] = commit
    return tags


@dataclass
class Tracker:
    """The open MLflow run of one pipeline."""

    run_id: str
    uri: str
    # a process that may be killed at any moment (a Ray worker) logs synchronously
    synchronous: bool = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics(
            dict(metrics), step=step, synchronous=self.synchronous, run_id=self.run_id
        )

    def epoch_sink(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=epoch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient(self.uri)
        for key, value in tags.items():
            client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), folder)

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        """Per-epoch values from the store: complete even for a resumed run."""
        import mlflow

        mlflow.flush_async_logging()
        client = mlflow.MlflowClient(self.uri)
        out = {}
        for key in keys:
            points = client.get_metric_history(self.run_id, key)
            out[key] = sorted({m.step: m.value for m in points}.items())
        return out

    def log_figure(self, figure: Any, name: str) -> None:
        import mlflow

        mlflow.log_figure(figure, f"plots/{name}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params(dict(params))

    @property
    def active_uri(self) -> str:
        """The store logging goes to now (a failed-over tracker's is a local one)."""
        return self.uri

    def guarded(self, what: str, action: Any) -> Any:
        """Run `action()`, which logs to the active run; a tracker for an MLflow server fails
        over to a local store when the server fails (plexa.tracking_failover)."""
        return action()

    def close(self, status: str) -> None:
        import mlflow

        mlflow.flush_async_logging()
        mlflow.end_run(status)


def get_run(run_id: str, uri: str | None = None) -> Run:
    from mlflow.exceptions import MlflowException

    store = client(uri)
    try:
        return store.get_run(run_id)
    except MlflowException as exc:
        raise_if_refused(exc, store.tracking_uri)
        where = store.tracking_uri
        raise RunNotFoundError(f"no MLflow run '{run_id}' in the store {where}") from exc


def logged_pipeline(run_id: str, uri: str | None = None) -> str:
    """The resolved pipeline YAML a run was started with."""
    import tempfile

    from mlflow.exceptions import MlflowException

    get_run(run_id, uri)
    store = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(store.download_artifacts(run_id, PIPELINE_ARTIFACT, tmp)).read_text()
        except (MlflowException, OSError) as exc:
            raise NotFoundError(
                f"run {run_id} has no {PIPELINE_ARTIFACT} artifact: was it started by plexa?"
            ) from exc


@contextlib.contextmanager
def reopen(run_id: str, uri: str | None = None) -> Iterator[None]:
    """Log more to a closed run (an export) and close it again with its earlier status."""
    import mlflow

    run = get_run(run_id, uri)
    mlflow.set_tracking_uri(resolve_uri(uri))
    with mlflow.start_run(run_id=run_id):
        yield
    mlflow.MlflowClient().set_terminated(run_id, run.info.status)


@dataclass
class RunRow:
    run_id: str
    pipeline: str
    status: str
    started: str
    metrics: dict[str, float]


MAIN_METRICS = ("test/acc", "test/r2", "test/loss", "val/acc", "val/loss")


def recent_runs(limit: int = 20, uri: str | None = None) -> list[RunRow]:
    """Newest first, across experiments; only runs plexa started."""
    import datetime as dt

    from mlflow.exceptions import MlflowException

    store = client(uri)
    try:
        experiments = [e.experiment_id for e in store.search_experiments()]
        if not experiments:
            return []
        runs = store.search_runs(
            experiments,
            filter_string="tags.`plexa.pipeline` != ''",
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
    except MlflowException as exc:
        raise_if_refused(exc, store.tracking_uri)
        raise
    rows = []
    for run in runs:
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        metrics = {k: run.data.metrics[k] for k in MAIN_METRICS if k in run.data.metrics}
        rows.append(
            RunRow(
                run.info.run_id, run.data.tags["plexa.pipeline"], run.info.status, started, metrics
            )
        )
    return rows


@contextlib.contextmanager
def open_run(spec: PipelineSpec, resume: str | None = None) -> Iterator[Tracker]:
    """Start (or reopen, for `--resume`) the pipeline's MLflow run; close it with the right
    status: FINISHED, KILLED on Ctrl-C, FAILED on an error."""
    import mlflow

    from plexa.runners import RunInterrupted

    uri = resolve_uri(spec.tracking.uri)
    mlflow.set_tracking_uri(uri)
    system = spec.tracking.system_metrics
    if system:
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    from plexa import tracking_failover

    if resume:
        get_run(resume, uri)
        run = mlflow.start_run(run_id=resume, log_system_metrics=system)
        tracker = Tracker(run.info.run_id, uri)
    elif tracking_failover.is_remote(uri):  # a server may fail: fail over to a local store
        tracker = tracking_failover.open_remote(spec, uri, tags_for(spec), system)
    else:
        mlflow.set_experiment(spec.tracking.experiment or spec.name)
        run = mlflow.start_run(
            run_name=spec.tracking.run_name, tags=tags_for(spec), log_system_metrics=system
        )
        mlflow.log_params(flatten(spec.model_dump(mode="json")))
        mlflow.log_text(spec.to_yaml(), PIPELINE_ARTIFACT)
        tracker = Tracker(run.info.run_id, uri)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (RunInterrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
