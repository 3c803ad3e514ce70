"""A shared MLflow server that goes away does not cost a run: plexa fails over to a local store.

Why fail over rather than only buffer and retry: a run logs more than metrics (figures,
checkpoints, the ONNX model and its registered version), and a buffer in memory is lost if the
server is still down when the process ends. So, for a run whose `tracking.uri` is an http(s)
server, plexa keeps a journal of what it logged (params, tags, metrics, texts: small) and, at
the first sign that the server is unreachable (a failed request, MLflow's own retries spent),
opens a run in a local sqlite store under the runs folder, replays the journal into it and
logs everything else there. `plexa sync` later copies the local run into the server: into the
very run that was started there when it was reachable (missing metric points, params, tags,
artifacts, logged models, registered versions and the final status), else into a new one.

Heavy packages (mlflow, requests) are imported inside functions, as everywhere in plexa.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import UnreachableError, UserError
from plexa.runs import runs_root
from plexa.tracking import (
    PIPELINE_ARTIFACT,
    PROBE_TIMEOUT,
    Tracker,
    flatten,
    is_remote,
    no_answer,
    point_mlflow_at,
    raise_if_refused,
    require_answer,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run

    from plexa.config import PipelineSpec

logger = logging.getLogger("plexa.tracking")

OFFLINE_DIR = "offline"  # under the runs folder (PLEXA_RUNS_DIR, default ./plexa-runs)
REMOTE_URI_TAG = "plexa.offline.remote_uri"
REMOTE_RUN_TAG = "plexa.offline.remote_run_id"
SYNCED_TAG = "plexa.synced_to"
SYNCED_FROM_TAG = "plexa.synced_from"
# MLflow error codes that mean "the server side failed", not "this request was wrong"
_SERVER_SIDE = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100


class SyncError(UserError, RuntimeError):
    """An offline run could not be copied to the server; the message says which and why."""


def offline_uri() -> str:
    """The local store runs fail over to: one sqlite file for all of them, artifacts beside."""
    folder = runs_root() / OFFLINE_DIR
    return f"sqlite:///{folder / 'mlflow.db'}"


def offline_artifacts(spec: PipelineSpec) -> str:
    """Where the offline store keeps the artifacts of an experiment's runs."""
    experiment = spec.tracking.experiment or spec.name
    return f"{(runs_root() / OFFLINE_DIR / 'artifacts').as_uri()}/{experiment}"


def unavailable(exc: BaseException) -> bool:
    """Whether an error from the tracking client means the server is gone or failing (fail
    over) rather than a request it refused for a reason (raise it)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in _SERVER_SIDE
    import requests

    return isinstance(exc, requests.RequestException | OSError | TimeoutError)


def reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Any HTTP answer from the server counts; a refused or timed-out connection does not."""
    return no_answer(uri, timeout) is None


@dataclass
class Journal:
    """Everything the run logged through its tracker, to replay into a local store."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key value ms step
    texts: dict[str, str] = field(default_factory=dict)
    inputs: list[DatasetInput] = field(default_factory=list)


@dataclass
class FailoverTracker(Tracker):
    """A Tracker for a run on an MLflow server that moves to the local store when the server
    fails. `run_id` stays the server's run (the run folder and the id `plexa sync` fills in);
    `active_run_id` and `active_uri` say where logging goes now."""

    experiment: str = ""
    run_name: str | None = None
    journal: Journal = field(default_factory=Journal)
    offline_run_id: str | None = None
    failed_at: str | None = None  # what was being logged when the server was found gone

    @property
    def offline(self) -> bool:
        return self.offline_run_id is not None

    @property
    def active_run_id(self) -> str:
        return self.offline_run_id or self.run_id

    @property
    def active_uri(self) -> str:
        return offline_uri() if self.offline else self.uri

    # ------------------------------------------------------------------ logging

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.journal.metrics += [(k, float(v), now, step or 0) for k, v in metrics.items()]
        # the journal holds the batch: after a failover it is replayed, not sent again
        self._guarded("metrics", lambda: Tracker.log_metrics(self, metrics, step), retry=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.journal.params.update({k: str(v) for k, v in params.items()})
        self._guarded("params", lambda: Tracker.log_params(self, params))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.journal.tags.update(tags)
        self._guarded("tags", lambda: Tracker.set_tags(self, tags))

    def log_text(self, text: str, path: str) -> None:
        self.journal.texts[path] = text
        self._guarded(f"text {path}", lambda: Tracker.log_text(self, text, path))

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        self.journal.inputs += datasets
        self._guarded("dataset inputs", lambda: Tracker.log_inputs(self, datasets))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._guarded(f"artifact {path.name}", lambda: Tracker.log_artifact(self, path, folder))

    def log_figure(self, figure: Any, name: str) -> None:
        self._guarded(f"figure {name}", lambda: Tracker.log_figure(self, figure, name))

    def log_image(self, image: Any, path: str) -> None:
        self._guarded(f"image {path}", lambda: Tracker.log_image(self, image, path))

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        """From the journal: complete whichever store has the run now, and no round trip."""
        out: dict[str, list[tuple[int, float]]] = {}
        for key in keys:
            points = {step: value for k, value, _, step in self.journal.metrics if k == key}
            out[key] = sorted(points.items())
        return out

    def stored_history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        return self._guarded("a metric history", lambda: Tracker.stored_history(self, keys))

    def guarded(self, what: str, action: Any) -> Any:
        """Run `action()` (which logs through this tracker's active run); on a server failure
        fail over and run it again locally. For logging done outside the tracker's own methods
        (the ONNX model and its registry version)."""
        return self._guarded(what, action)

    def close(self, status: str) -> None:
        """Flush, end the active run with `status`, and say how to sync an offline run."""
        self._guarded("the pending metrics", self.flush, retry=False)
        self._stop_system_metrics()
        self._guarded(
            "the run's status", lambda: self.client().set_terminated(self.active_run_id, status)
        )
        if self.offline:
            logger.warning(self.sync_advice())

    def sync_advice(self) -> str:
        where = (
            f"run {self.run_id} is"
            if self.run_id == self.offline_run_id
            else f"run {self.run_id} continued as run {self.offline_run_id}"
        )
        return (
            f"MLflow server {self.uri} was unreachable ({self.failed_at}); {where} in the local "
            f"store {offline_uri()}. Copy it to the server with: "
            f"plexa sync --from {offline_uri()} --to {self.uri}"
        )

    # ------------------------------------------------------------------ failing over

    def _guarded(self, what: str, action: Any, retry: bool = True) -> Any:
        try:
            return action()
        except Exception as exc:
            if self.offline:
                raise
            self._fail_over(exc, what)
            return action() if retry else None

    def _fail_over(self, exc: BaseException, what: str) -> None:
        if self.offline or not unavailable(exc):
            raise exc
        self.failed_at = f"while logging {what}: {type(exc).__name__}: {_first_line(exc)}"
        logger.warning(
            "MLflow server %s failed %s; the run goes on in the local store %s",
            self.uri, self.failed_at, offline_uri(),
        )  # fmt: skip
        self._pending = None  # its batch is in the journal
        # the server run's sampler ends by itself once it cannot reach the server; waiting for
        # it to finish would wait out MLflow's retries
        self._monitor = None
        self.offline_run_id = start_offline_run(
            self.experiment, self.run_name, self.journal, self.uri, self.run_id or None
        )
        if self.system_metrics:
            self.start_system_metrics()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else ""


def start_offline_run(
    experiment: str,
    run_name: str | None,
    journal: Journal,
    remote_uri: str,
    remote_run_id: str | None,
) -> str:
    """Open a run in the local store and replay the journal into it; MLflow's default client
    points there from now on (the ONNX model logs through it)."""
    import mlflow
    from mlflow.entities import Metric, Param

    from plexa.tracking import experiment_id

    uri = offline_uri()
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(uri)
    tags = {**journal.tags, REMOTE_URI_TAG: remote_uri}
    if remote_run_id:
        tags[REMOTE_RUN_TAG] = remote_run_id
    artifacts = (runs_root() / OFFLINE_DIR / "artifacts").as_uri()
    run = client.create_run(
        experiment_id(client, experiment, f"{artifacts}/{experiment}"),
        tags=tags,
        run_name=run_name,
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in journal.params.items()]
    for start in range(0, len(params), _PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + _PARAM_BATCH])
    metrics = [Metric(k, v, ms, step) for k, v, ms, step in journal.metrics]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
    for path, text in journal.texts.items():
        client.log_text(run_id, text, path)
    if journal.inputs:
        client.log_inputs(run_id, datasets=journal.inputs)
    point_mlflow_at(uri, run_id)
    return run_id


def open_remote(spec: PipelineSpec, uri: str, tags: dict[str, str]) -> Tracker:
    """Start the pipeline's run on an MLflow server; if the server does not answer, start it
    in the local store at once."""
    import mlflow

    from plexa.tracking import experiment_id

    experiment = spec.tracking.experiment or spec.name
    journal = Journal(
        params={k: str(v) for k, v in flatten(spec.model_dump(mode="json")).items()},
        tags=dict(tags),
        texts={PIPELINE_ARTIFACT: spec.to_yaml()},
    )
    tracker = FailoverTracker(
        run_id="",
        uri=uri,
        experiment=experiment,
        run_name=spec.tracking.run_name,
        journal=journal,
    )
    if reachable(uri):
        try:
            client = mlflow.MlflowClient(uri)
            run = client.create_run(
                experiment_id(client, experiment), tags=tags, run_name=spec.tracking.run_name
            )
            tracker.run_id = run.info.run_id
            Tracker.log_params(tracker, journal.params)
            Tracker.log_text(tracker, journal.texts[PIPELINE_ARTIFACT], PIPELINE_ARTIFACT)
            return tracker
        except Exception as exc:
            if not unavailable(exc):
                raise
            tracker.failed_at = f"at the start: {type(exc).__name__}: {_first_line(exc)}"
    else:
        tracker.failed_at = f"at the start: no answer from {uri} within {PROBE_TIMEOUT:.0f}s"
    logger.warning(
        "MLflow server %s unreachable %s; the run goes on in the local store %s",
        uri, tracker.failed_at, offline_uri(),
    )  # fmt: skip
    tracker.offline_run_id = start_offline_run(
        experiment, spec.tracking.run_name, journal, uri, tracker.run_id or None
    )
    if not tracker.run_id:
        tracker.run_id = tracker.offline_run_id  # no server run: the local id names the folder
    return tracker


# --------------------------------------------------------------------------- plexa sync


@dataclass(frozen=True)
class SyncedRun:
    """One offline run copied to a server: where it went and what it registered there."""

    offline_run_id: str
    uri: str
    run_id: str
    registered: tuple[str, ...]  # models:/name/version on the server


def sync(source: str | None = None, target: str | None = None) -> list[SyncedRun]:
    """Copy every run of the offline store not yet synced to its server (`target`, else the
    server the run failed over from). Idempotent: a synced run is tagged and skipped."""
    import mlflow
    from mlflow.exceptions import MlflowException

    given, source = source, source or offline_uri()
    if "://" not in source:  # a path: the sqlite file runs failed over to (or a folder store)
        path = Path(source).expanduser()
        if not path.exists():
            raise SyncError(f"--from {given}: no such store")
        if path.is_file():
            source = f"sqlite:///{path.absolute()}"
    if source.startswith("sqlite:///") and not Path(source.removeprefix("sqlite:///")).exists():
        if given:
            raise SyncError(f"--from {given}: no such store")
        return []  # no run ever failed over here
    local = mlflow.MlflowClient(source)
    experiments = [e.experiment_id for e in local.search_experiments()]
    runs = local.search_runs(experiments, max_results=10000) if experiments else []
    done: list[SyncedRun] = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if SYNCED_TAG in run.data.tags:
            continue
        uri = target or run.data.tags.get(REMOTE_URI_TAG)
        if not uri:
            raise SyncError(f"run {run.info.run_id} in {source} names no server: pass --to URI")
        try:
            if is_remote(uri):  # probed: a server that is down costs minutes of MLflow retries
                require_answer(uri)
            done.append(_sync_run(local, run, mlflow.MlflowClient(uri), uri))
        except UnreachableError:
            raise _gone(uri, len(done)) from None
        except Exception as exc:
            if isinstance(exc, MlflowException):
                raise_if_refused(exc, uri)
            if not unavailable(exc):
                raise
            raise _gone(uri, len(done)) from exc
    return done


def _gone(uri: str, copied: int) -> UnreachableError:
    return UnreachableError(
        f"the MLflow server at {uri} did not answer; {copied} run(s) copied, the rest stay in "
        "the local store: run this again once it is back"
    )


def _sync_run(local: MlflowClient, run: Run, remote: MlflowClient, uri: str) -> SyncedRun:
    from mlflow.exceptions import MlflowException

    offline_id = run.info.run_id
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("plexa.offline.")}
    tags.pop(SYNCED_TAG, None)
    remote_id = run.data.tags.get(REMOTE_RUN_TAG)
    try:
        remote_run = remote.get_run(remote_id) if remote_id else None
    except MlflowException:
        remote_run = None  # a run started on another server, or since deleted
    experiment_name = local.get_experiment(run.info.experiment_id).name
    if remote_run is None:
        experiment = remote.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment else remote.create_experiment(experiment_name)
        )
        remote_run = remote.create_run(
            experiment_id, start_time=run.info.start_time, run_name=run.info.run_name
        )
    remote_id = remote_run.info.run_id
    experiment_id = remote_run.info.experiment_id

    _copy_data(local, remote, offline_id, remote_run, tags)
    offline_inputs = local.get_run(offline_id).inputs
    if offline_inputs is not None and offline_inputs.dataset_inputs:
        remote.log_inputs(remote_id, datasets=offline_inputs.dataset_inputs)
    with tempfile.TemporaryDirectory() as tmp:
        if local.list_artifacts(offline_id):
            remote.log_artifacts(remote_id, local.download_artifacts(offline_id, "", tmp))
    models = _copy_models(local, remote, run, experiment_id, remote_id)
    registered = _copy_versions(local, remote, offline_id, remote_id, models)
    remote.set_terminated(remote_id, run.info.status, end_time=run.info.end_time)
    local.set_tag(offline_id, SYNCED_TAG, f"{uri} {remote_id}")
    return SyncedRun(offline_id, uri, remote_id, tuple(registered))


def _copy_data(
    local: MlflowClient, remote: MlflowClient, offline_id: str, remote_run: Run, tags: dict
) -> None:
    """Params and tags the server lacks, and every metric point it lacks (key, step, value)."""
    from mlflow.entities import Metric, Param, RunTag

    remote_id = remote_run.info.run_id
    known = remote_run.data.params
    offline = local.get_run(offline_id).data
    params = [Param(k, v) for k, v in offline.params.items() if k not in known]
    for start in range(0, len(params), _PARAM_BATCH):
        remote.log_batch(remote_id, params=params[start : start + _PARAM_BATCH])
    tags[SYNCED_FROM_TAG] = offline_id
    remote.log_batch(remote_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    missing = []
    for key in offline.metrics:
        have = {(m.step, m.value) for m in remote.get_metric_history(remote_id, key)}
        missing += [
            Metric(key, m.value, m.timestamp, m.step)
            for m in local.get_metric_history(offline_id, key)
            if (m.step, m.value) not in have
        ]
    for start in range(0, len(missing), _BATCH):
        remote.log_batch(remote_id, metrics=missing[start : start + _BATCH])


def _copy_models(
    local: MlflowClient, remote: MlflowClient, run: Run, experiment_id: str, remote_id: str
) -> dict[str, str]:
    """MLflow 3 keeps logged models (the ONNX export) beside the run's artifacts: copy each,
    pointing its MLmodel at the server's ids. Returns offline model id -> server model id."""
    import mlflow
    import yaml

    found = local.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    mapping = {}
    for model in found:
        copy = remote.create_logged_model(
            experiment_id,
            name=model.name,
            source_run_id=remote_id,
            tags=model.tags,
            params=model.params,
            model_type=model.model_type,
        )
        with tempfile.TemporaryDirectory() as tmp:
            # the offline store's artifacts are local files: no tracking server involved
            where = mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=tmp)
            folder = Path(where)
            mlmodel = folder / "MLmodel"
            if mlmodel.exists():
                meta = yaml.safe_load(mlmodel.read_text())
                meta.update(model_id=copy.model_id, run_id=remote_id)
                mlmodel.write_text(yaml.safe_dump(meta, sort_keys=False))
            remote.log_model_artifacts(copy.model_id, str(folder))
        remote.finalize_logged_model(copy.model_id, "READY")
        mapping[model.model_id] = copy.model_id
    return mapping


def _copy_versions(
    local: MlflowClient,
    remote: MlflowClient,
    offline_id: str,
    remote_id: str,
    models: dict[str, str],
) -> list[str]:
    """Each registry version the offline run created, created again on the server."""
    from mlflow.exceptions import MlflowException

    registered = []
    for version in local.search_model_versions(f"run_id = '{offline_id}'"):
        # the version names its logged model by id, or only by its source `models:/m-...`
        # (typed optional, but every registry version is created from a source)
        own = version.model_id or version.source.removeprefix("models:/").split("/")[0]  # type: ignore[union-attr]
        model_id = models.get(own)
        if model_id is None:
            continue
        try:
            remote.create_registered_model(version.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        copy = remote.create_model_version(
            version.name,
            source=f"models:/{model_id}",
            run_id=remote_id,
            tags=version.tags,
            description=version.description,
            model_id=model_id,
        )
        registered.append(f"models:/{copy.name}/{copy.version}")
    return registered
