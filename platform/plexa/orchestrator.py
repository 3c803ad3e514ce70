"""The one flow every pipeline takes: spec -> runner -> tracked run -> result. Thin assembly:
the runner (looked up by name) trains, the tracker logs, and `Runner.fit` finishes every run
the same way. Nothing here asks which runner it is."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from plexa import artifacts, runners, tracking, tracking_open
from plexa.config import PipelineSpec
from plexa.errors import ResumeError
from plexa.runners import Job, Runner, RunResult
from plexa.runs import EXPORT, RUN_DIR_ENV, RUN_DIR_TAG, global_rank, run_dir

if TYPE_CHECKING:
    import lightning as L

    from plexa.events import Sink
    from plexa.export import ExportResult

__all__ = ["ResumeError", "export_run", "run"]


def run(
    spec: PipelineSpec,
    *,
    resume: str | None = None,
    sinks: Sequence[Sink] = (),
    callbacks: Sequence[L.Callback] = (),
    runner: Runner | None = None,
) -> RunResult:
    """Train, test, track and export one pipeline. `resume` is an MLflow run id; `sinks` get
    the run's progress events; `callbacks` join the Lightning Trainer wherever it runs;
    `runner` replaces the one the pipeline names (a configured one: `plexa federate --deploy`)."""
    started = time.perf_counter()
    rank_zero = global_rank() == 0
    if resume and rank_zero:  # before the runner's import, which takes seconds
        tracking.check_resume(spec, resume)
    runner = runner or runners.for_pipeline(spec)
    runner.check(spec, resume)
    if not rank_zero:  # a DDP worker: train, and leave every side effect to rank zero
        folder = Path(os.environ[RUN_DIR_ENV])
        runner.train(Job(spec, tracking.NullTracker(), folder, callbacks=callbacks))
        return RunResult(spec.name, None, "FINISHED")
    with (
        runner.session(spec),
        tracking_open.open_run(spec, resume) as tracker,
        artifacts.logging_to(tracker),
    ):
        folder = run_dir(tracker.run_id)
        os.environ[RUN_DIR_ENV] = str(folder)  # DDP ranks > 0 keep their checkpoints there
        tracker.set_tags({RUN_DIR_TAG: str(folder)})
        if not resume:  # with the pipeline and plugin versions: enough to run it again
            tracker.log_text(tracking.installed_packages(), tracking.PACKAGES_ARTIFACT)
        resume_from = None
        if resume and runner.resumes_from_checkpoint:
            resume_from = tracking.fetch_checkpoint(tracker.run_id, folder, "last", tracker.uri)
        job = Job(
            spec,
            tracker,
            folder,
            resume=resume is not None,
            resume_from=resume_from,
            sinks=[tracker.on_event, *sinks],
            callbacks=callbacks,
        )
        return runner.fit(job, started)


def export_run(run_id: str, tracking_uri: str | None = None) -> ExportResult:
    """Rebuild a finished run's model from its logged pipeline and best checkpoint, export it
    to ONNX again and log it to the same run."""
    from plexa.assembly import assemble, load_weights
    from plexa.export import export_and_log

    run = tracking.get_run(run_id, tracking_uri)
    spec = tracking.pipeline_of(run_id, tracking_uri)
    if tracking_uri:
        spec.tracking.uri = tracking_uri
    built = assemble(spec)
    folder = Path(run.data.tags.get(RUN_DIR_TAG, run_dir(run_id)))
    try:
        checkpoint = tracking.fetch_checkpoint(run_id, folder, "best", spec.tracking.uri)
    except ResumeError:
        checkpoint = tracking.fetch_checkpoint(run_id, folder, "last", spec.tracking.uri)
    load_weights(built.module, checkpoint)
    with tracking.reopen(run_id, spec.tracking.uri) as tracker:
        return export_and_log(built.export_module(), spec, built.data, folder / EXPORT, tracker)
