"""Opening a pipeline's MLflow run and closing it with the right status: on a store on this
machine a plain `Tracker`, on an MLflow server one that fails over to a local store when the
server goes away (`plexa.tracking_failover`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from plexa.config import PipelineSpec
from plexa.errors import PlexaError, RunInterrupted
from plexa.tracking import (
    ERROR_TAG,
    Tracker,
    get_run,
    is_remote,
    point_mlflow_at,
    resolve_uri,
    start_run,
    tags_for,
)
from plexa.tracking_failover import open_remote


@contextlib.contextmanager
def open_run(spec: PipelineSpec, resume: str | None = None) -> Iterator[Tracker]:
    """Start (or reopen, for `--resume`) the pipeline's MLflow run; close it with the right
    status: FINISHED, KILLED on Ctrl-C, FAILED on an error."""
    import mlflow

    uri = resolve_uri(spec.tracking.uri)
    mlflow.set_tracking_uri(uri)
    if resume:
        get_run(resume, uri)
        tracker = Tracker(resume, uri)
        tracker.client().update_run(resume, status="RUNNING")
    elif is_remote(uri):  # a server may fail: fail over to a local store
        tracker = open_remote(spec, uri, tags_for(spec))
    else:
        experiment = spec.tracking.experiment or spec.name
        tracker = start_run(uri, experiment, spec.tracking.run_name, tags_for(spec), spec)
    point_mlflow_at(tracker.active_uri, tracker.active_run_id)
    if spec.tracking.system_metrics:
        tracker.start_system_metrics(resume=resume is not None)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (RunInterrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    except PlexaError as exc:
        message = str(exc)[:5000]
        tracker.guarded("the error", lambda: tracker.set_tags({ERROR_TAG: message}))
        raise
    finally:
        tracker.close(status)
