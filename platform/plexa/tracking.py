"""MLflow: one run per pipeline, logged from rank zero only.

Metrics go through MLflow's asynchronous logging so training never waits on the store; the
queue is flushed before the run is closed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plexa
from plexa.config import PipelineSpec
from plexa.errors import NotFoundError, ResumeError, UnreachableError
from plexa.plugins import architectures, datasets
from plexa.runs import CHECKPOINTS, checkpoint

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run
    from mlflow.exceptions import MlflowException

    from plexa.events import Event

PIPELINE_ARTIFACT = "pipeline.yaml"
PACKAGES_ARTIFACT = "environment/packages.txt"  # what was installed when the run started
PROBE_TIMEOUT = 5.0  # seconds: how long a check waits for an MLflow server's /health
ERROR_TAG = "plexa.error"  # why a FAILED run failed, when plexa knows
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
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


def no_answer(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the server at `uri` gave no HTTP answer at all, or None when it answered (any
    status; a TLS error is an answer too: MLflow's own TLS settings decide the rest)."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return None
    except requests.RequestException as exc:
        return type(exc).__name__
    return None


@functools.cache  # only an answer is remembered: a raise is not cached
def require_answer(uri: str) -> None:
    """An UnreachableError unless the server at `uri` answers HTTP at all."""
    reason = no_answer(uri)
    if reason is not None:
        raise UnreachableError(
            f"the MLflow server at {uri} did not answer ({reason}): is it running, "
            "and is that its address?"
        )


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
    """The open MLflow run of one pipeline: every call names the run by id, so any thread (the
    Ray runner's epoch relay, Flower's ServerApp thread) logs to the same run, and nothing
    depends on MLflow's per-thread active run.

    Metrics are sent asynchronously (training never waits on the store); a batch's failure
    shows when the next is sent, an epoch later, or at `flush`."""

    run_id: str
    uri: str
    # a process that may be killed at any moment (a Flower ServerApp, a Tune trial) logs
    # synchronously
    synchronous: bool = False
    system_metrics: bool = False
    _pending: Any = field(default=None, repr=False)  # the last asynchronous batch
    _monitor: Any = field(default=None, repr=False)

    @property
    def active_run_id(self) -> str:
        """The run logging goes to now (a failed-over tracker's is in a local store)."""
        return self.run_id

    @property
    def active_uri(self) -> str:
        return self.uri

    def client(self) -> MlflowClient:
        import mlflow

        return mlflow.MlflowClient(self.active_uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        operation = self.client().log_batch(
            self.active_run_id, metrics=batch, synchronous=self.synchronous
        )
        self._wait_pending()
        self._pending = operation

    def on_event(self, event: Event) -> None:
        """The MLflow sink of the progress stream: an epoch's metrics at its step."""
        if event.kind == "epoch":
            self.log_metrics(event.metrics, step=event.index)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self.client().log_batch(self.active_run_id, tags=batch, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in params.items()]
        client = self.client()
        for start in range(0, len(batch), _PARAM_BATCH):
            client.log_batch(
                self.active_run_id, params=batch[start : start + _PARAM_BATCH], synchronous=True
            )

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client().log_artifact(self.active_run_id, str(path), folder)

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        """Dataset inputs (`plexa.lineage`): what each split was."""
        self.client().log_inputs(self.active_run_id, datasets=list(datasets))

    def log_figure(self, figure: Any, name: str) -> None:
        self.client().log_figure(self.active_run_id, figure, f"plots/{name}")

    def log_text(self, text: str, path: str) -> None:
        self.client().log_text(self.active_run_id, text, path)

    def log_image(self, image: Any, path: str) -> None:
        self.client().log_image(self.active_run_id, image, artifact_file=path)

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        """Per-epoch values from the store: complete even for a resumed run."""
        return self.stored_history(keys)

    def stored_history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        """What the store holds now (another process may have logged it)."""
        self.flush()
        client = self.client()
        out = {}
        for key in keys:
            points = client.get_metric_history(self.active_run_id, key)
            out[key] = sorted({m.step: m.value for m in points}.items())
        return out

    def guarded(self, what: str, action: Any) -> Any:
        """Run `action()`, which logs to this run; a tracker for an MLflow server fails over to
        a local store when the server fails (plexa.tracking_failover)."""
        return action()

    def start_system_metrics(self, resume: bool = False) -> None:
        """MLflow's CPU, memory (and GPU) sampling, into the active run once a second."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.system_metrics = True
        self._monitor = SystemMetricsMonitor(
            self.active_run_id,
            sampling_interval=1,
            samples_before_logging=1,
            resume_logging=resume,
            tracking_uri=self.active_uri,
        )
        self._monitor.start()

    def flush(self) -> None:
        self._wait_pending()

    def close(self, status: str) -> None:
        self.flush()
        self._stop_system_metrics()
        self.client().set_terminated(self.active_run_id, status)

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()  # raises the batch's error, if it failed

    def _stop_system_metrics(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()


class NullTracker(Tracker):
    """What DDP ranks other than zero log through: nothing (side effects on rank zero only)."""

    def __init__(self) -> None:
        super().__init__(run_id="", uri="")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def on_event(self, event: Event) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        pass

    def log_figure(self, figure: Any, name: str) -> None:
        pass

    def log_text(self, text: str, path: str) -> None:
        pass

    def log_image(self, image: Any, path: str) -> None:
        pass

    def stored_history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        return {key: [] for key in keys}

    def close(self, status: str) -> None:
        pass


def point_mlflow_at(uri: str, run_id: str) -> None:
    """Make a run's store and experiment MLflow's process-wide defaults: the ONNX model's
    `log_model` (which names the run by id) creates its logged model in the default
    experiment and logs through the default client."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment)


def is_remote(uri: str) -> bool:
    """An MLflow server (which may go away), not a store on this machine."""
    return uri.startswith(("http://", "https://"))


def warm_store(uri: str | None) -> None:
    """Open the store once (a fresh sqlite store migrates its schema, seconds of Python); the
    client is cached per URI, so the run opens it warm. Problems surface when the run opens."""
    import mlflow

    with contextlib.suppress(Exception):
        mlflow.MlflowClient(resolve_uri(uri)).search_experiments(max_results=1)


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
def reopen(run_id: str, uri: str | None = None) -> Iterator[Tracker]:
    """Log more to an ended run (an export); its status stays what it was."""

    get_run(run_id, uri)
    point_mlflow_at(resolve_uri(uri), run_id)
    tracker = Tracker(run_id, resolve_uri(uri), synchronous=True)
    yield tracker
    tracker.flush()


def fetch_checkpoint(run_id: str, folder: Path, name: str, uri: str | None = None) -> Path:
    """The run's own checkpoint file, or the copy logged to MLflow when the folder is gone."""
    import mlflow

    local = checkpoint(folder, name)
    if local.exists():
        return local
    try:
        path = mlflow.MlflowClient(resolve_uri(uri)).download_artifacts(
            run_id, f"{CHECKPOINTS}/{name}.ckpt", str(folder)
        )
    except Exception as exc:
        raise ResumeError(
            f"run {run_id} has no {name} checkpoint (looked in {local} and the run's artifacts)"
        ) from exc
    return Path(path)


def check_resume(spec: PipelineSpec, run_id: str) -> None:
    """Only an unfinished run of the very same pipeline can be continued exactly."""
    import yaml

    run = get_run(run_id, spec.tracking.uri)
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; nothing to resume")
    logged = flatten(yaml.safe_load(logged_pipeline(run_id, spec.tracking.uri)))
    now = flatten(yaml.safe_load(spec.to_yaml()))
    changed = sorted(k for k in logged.keys() | now.keys() if logged.get(k) != now.get(k))
    if changed:
        raise ResumeError(
            f"run {run_id} was started with a different pipeline; differing keys: "
            + ", ".join(changed)
        )


def pipeline_of(run_id: str, uri: str | None = None, overrides: Iterable[str] = ()) -> PipelineSpec:
    """The resolved pipeline a run was started with, `overrides` applied, validated again."""
    import yaml

    from plexa.config import apply_overrides, validate

    raw = apply_overrides(yaml.safe_load(logged_pipeline(run_id, uri)), overrides)
    return validate(raw, f"pipeline of run {run_id}")


def installed_packages() -> str:
    """Every installed distribution and its version, as a requirements file pins them."""
    from importlib.metadata import distributions

    found = {(d.metadata["Name"] or "?"): d.version for d in distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()))


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


def experiment_id(client: MlflowClient, name: str, artifacts: str | None = None) -> str:
    """The experiment called `name`, created when missing (by another process meanwhile too)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str], spec: PipelineSpec
) -> Tracker:
    """A new run with the pipeline's tags, its flattened params and its YAML."""
    import mlflow
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.MlflowClient(uri)
    run = client.create_run(
        experiment_id(client, experiment), tags=resolve_tags(dict(tags)), run_name=run_name
    )
    tracker = Tracker(run.info.run_id, uri)
    tracker.log_params(flatten(spec.model_dump(mode="json")))
    tracker.log_text(spec.to_yaml(), PIPELINE_ARTIFACT)
    return tracker
