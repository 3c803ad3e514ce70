"""The sweep runner: architecture (and training hyperparameter) search on Ray Tune.

One MLflow run per sweep, with a nested run per trial (`plexa.sweep.trial`). Trials train in
Tune's actors through plexa's own `fit_and_test`; every finished trial is exported to ONNX and
timed in ONNX Runtime. At the end the best finished trial's checkpoint is reused (not
retrained): exported with the parity check and registered under `export.register_as`, and the
metric-vs-latency Pareto front is logged as a PNG and a Markdown table.

Tune's experiment lives in the run's folder (`plexa-runs/RUN_ID/tune/sweep`), so
`plexa run PIPELINE --resume RUN_ID` restores it: finished and failed trials are kept as they
are, unfinished ones start again, and the search goes on to `sweep.trials`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.errors import ResumeError, RunFailed, RunInterrupted, UserError
from plexa.events import Event
from plexa.runners import register
from plexa.runners.base import Job, Runner, Trained
from plexa.runs import checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.entities import Run

    from plexa.sweep.pareto import TrialRow
    from plexa.tracking import Tracker

EXPERIMENT = "sweep"
_TERMINAL = ("TERMINATED", "ERROR")


class SweepError(RunFailed):
    """The sweep ran but left nothing to export: no trial finished."""


def target(spec: PipelineSpec) -> tuple[str, str]:
    """(metric, mode) the sweep optimises: the pipeline's, else the task's checkpoint metric."""
    sweep = spec.sweep
    assert sweep is not None
    metric = sweep.metric or ("val/acc" if spec.task() == "classification" else "val/loss")
    mode = sweep.mode or ("max" if metric.endswith(("/acc", "/r2")) else "min")
    return metric, mode


# where the running sweep's trial events go: Tune pickles its callbacks with the experiment
# (and restores them on resume), so the callback calls `_emit`, pickled by reference, and not
# the job's sinks, which hold the open run
_EMIT: list[Callable[[Event], None]] = []


def _emit(event: Event) -> None:
    for emit in _EMIT:
        emit(event)


def _progress_callback(total: int) -> Any:
    """A Tune callback emitting an event per trial as it ends (Tune's own output is off)."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.ended = 0

        def _emit(self, trial: Any, note: str) -> None:
            result = trial.last_result or {}
            metrics = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
            event = Event("trial", self.ended, total, metrics, note, str(trial.trial_id))
            self.ended += 1
            _emit(event)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            finished = (trial.last_result or {}).get("finished")
            self._emit(trial, "finished" if finished else "stopped")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._emit(trial, "failed")

    return Progress()


def _searcher(spec: PipelineSpec, seed: int) -> Any:
    sweep = spec.sweep
    assert sweep is not None
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    if sweep.search == "evolution":
        from plexa.sweep.evolution import RegularizedEvolution

        return RegularizedEvolution(
            population=sweep.population, tournament=sweep.tournament, seed=seed
        )
    from ray.tune.search import BasicVariantGenerator

    # a search generator, not a Searcher: it limits concurrency itself
    return BasicVariantGenerator(random_state=seed, max_concurrent=sweep.concurrency)


def _scheduler(spec: PipelineSpec, domains: dict[str, Any]) -> Any:
    sweep = spec.sweep
    assert sweep is not None
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=spec.train.max_epochs,
            grace_period=min(sweep.grace_period, spec.train.max_epochs),
            reduction_factor=sweep.reduction_factor,
        )
    if sweep.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=sweep.perturbation_interval,
            hyperparam_mutations=domains,
        )
    return None


def _tuner(
    spec: PipelineSpec,
    setup: dict[str, Any],
    domains: dict[str, Any],
    storage: Path,
    resume: bool,
    progress: Any,
) -> Any:
    """A new Tuner, or the one saved in the run's folder when resuming."""
    from ray import tune

    sweep = spec.sweep
    assert sweep is not None
    from plexa.sweep.trial import train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup),
        {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu},
    )
    experiment = storage / EXPERIMENT
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ResumeError(f"no Tune experiment to resume in {experiment}")
        return tune.Tuner.restore(
            str(experiment),
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    seed = sweep.seed if sweep.seed is not None else spec.train.seed
    return tune.Tuner(
        trainable,
        param_space=domains,
        tune_config=tune.TuneConfig(
            metric=setup["tune_metric"],
            mode=setup["mode"],
            num_samples=sweep.trials,
            search_alg=_searcher(spec, seed),
            scheduler=_scheduler(spec, domains),
            max_concurrent_trials=None if sweep.search == "random" else sweep.concurrency,
            time_budget_s=sweep.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(storage),
            verbose=0,
            # a trial's final report ends it before any scheduler acts on it (PBT would
            # otherwise exploit a finished trial and start it again)
            stop={"finished": 1},
            callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _absolute_uri(uri: str) -> str:
    """Trials run in other processes (and folders): a relative sqlite path must not move."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


@register("sweep")
class SweepRunner(Runner):
    name = "sweep"
    verb = "sweeping"
    resumes_from_checkpoint = False  # Tune restores its experiment from the run's folder

    def check(self, spec: PipelineSpec, resume: str | None) -> None:
        if spec.sweep is None:
            raise UserError("the sweep runner needs a sweep: section in the pipeline")

    def describe(self, spec: PipelineSpec) -> str:
        sweep = spec.sweep
        assert sweep is not None
        return (
            f"[cyan]{spec.name}[/cyan]: {spec.model.plugin} on {spec.data.plugin}, "
            f"{sweep.trials} trials ({sweep.search}, {sweep.scheduler}) of up to "
            f"{spec.train.max_epochs} epochs"
        )

    def session(self, spec: PipelineSpec) -> contextlib.AbstractContextManager[None]:
        from plexa.runners.ray import ray_session

        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        return ray_session(spec)

    def train(self, job: Job) -> Trained:
        """Run (or resume) the sweep; the best trial's checkpoint is what `finish` exports."""
        from plexa.plugins import architectures, datasets
        from plexa.sweep import space as spaces
        from plexa.tracking_failover import offline_artifacts, offline_uri

        spec, tracker, run_dir = job.spec, job.tracker, job.run_dir
        sweep = spec.sweep
        assert sweep is not None
        started = time.perf_counter()
        arch_cls = architectures.get(spec.model.plugin)
        plain, _ = spaces.merged(spec, arch_cls)
        metric, mode = target(spec)
        weights = dict(sweep.objectives)
        tracker.set_tags({"plexa.sweep": "true"})
        setup = {
            "spec": spec.model_dump(mode="json"),
            "space": plain,
            "parent_run_id": tracker.run_id,
            "uri": _absolute_uri(tracker.active_uri),
            "experiment": spec.tracking.experiment or spec.name,
            # where a trial logs when the sweep's MLflow server does not answer
            "offline": {"uri": offline_uri(), "artifacts": offline_artifacts(spec)},
            "run_dir": str(run_dir),
            "cwd": str(Path.cwd()),
            "plugins": (arch_cls, datasets.get(spec.data.plugin)),
            "metric": metric,
            "mode": mode,
            "tune_metric": "objective" if weights else metric,
            "objectives": weights,
            "latency_early": "latency_ms" in weights,
            "latency_runs": sweep.latency_runs,
            "checkpoints": sweep.scheduler == "pbt",
            "gpu": sweep.resources.gpu,
        }
        previous = signal.getsignal(signal.SIGINT)
        _EMIT[:] = [job.emit]
        try:
            domains = spaces.flat_domains(plain)
            progress = _progress_callback(sweep.trials)
            tuner = _tuner(spec, setup, domains, run_dir / "tune", job.resume, progress)
            trials = _trials(tuner.fit())
        finally:
            _EMIT.clear()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)  # Tune's handler outlives the run
        rows = _settle(tracker, trials, plain, metric, weights)
        if _interrupted(trials, sweep.trials, sweep.time_budget_s, started):
            raise RunInterrupted(tracker.run_id, None)
        best = _best(rows, "objective" if weights else metric, mode)
        _log_sweep(tracker, rows, metric, mode, best)
        if best is None:
            raise SweepError(
                f"sweep '{spec.name}': no trial finished ({len(rows)} ran; see the nested runs "
                f"of MLflow run {tracker.run_id} for their errors)"
            )
        return _best_trained(spec, tracker, run_dir, best, trials)


def _trials(grid: Any) -> list[Any]:
    """Every trial of the experiment Tune just ran, with its status and id.

    Private API, kept on purpose: `ResultGrid` exposes each trial's result but neither its
    status (TERMINATED, ERROR, or unfinished after Ctrl-C) nor its id, and both decide what the
    sweep records; `tests/test_private_apis.py` fails when a Ray
    upgrade removes it.
    """
    return list(grid._experiment_analysis.trials)


def _interrupted(trials: list, wanted: int, budget: float | None, started: float) -> bool:
    """Tune returns normally on Ctrl-C; a sweep is interrupted when trials are left unfinished
    or not yet started, unless the time budget ended it."""
    if any(t.status not in _TERMINAL for t in trials):
        return True
    out_of_time = budget is not None and time.perf_counter() - started >= budget * 0.95
    return len(trials) < wanted and not out_of_time


def _settle(
    tracker: Tracker, trials: list, plain: dict[str, Any], metric: str, weights: dict[str, float]
) -> list[TrialRow]:
    """One row per trial, and a final status on every nested run: a trial the scheduler or an
    interruption stopped before it could say so itself is KILLED, an errored one FAILED."""
    from plexa.sweep.pareto import TrialRow
    from plexa.sweep.space import decode
    from plexa.sweep.trial import EARLY_STOPPED_TAG, PARENT_TAG, TRIAL_TAG

    def nested_runs() -> tuple[Any, list[Any]]:
        client = tracker.client()
        experiment = client.get_run(tracker.active_run_id).info.experiment_id
        where = f"tags.`{PARENT_TAG}` = '{tracker.run_id}'"
        return client, client.search_runs([experiment], filter_string=where, max_results=5000)

    # after a failover only the local store's trials can be read: the others are told by Tune
    client, nested = tracker.guarded("the trials' runs", nested_runs)
    by_trial: dict[str | None, Any] = {}
    run: Run | None  # below: a trial's latest attempt, or None
    for run in sorted(nested, key=lambda r: r.info.start_time):
        by_trial[run.data.tags.get(TRIAL_TAG, "")] = run  # the latest attempt wins
    for run in nested:
        if run.info.status == "RUNNING" and by_trial.get(run.data.tags.get(TRIAL_TAG)) is not run:
            client.set_terminated(run.info.run_id, "KILLED")  # an attempt a resume replaced
    rows = []
    for trial in trials:
        run = by_trial.get(trial.trial_id)
        result = trial.last_result or {}
        finished = trial.status == "TERMINATED" and result.get("finished")
        status = run.info.status if run is not None else "FINISHED" if finished else "FAILED"
        if run is not None and status == "RUNNING":
            status = "FAILED" if trial.status == "ERROR" else "KILLED"
            if status == "KILLED":
                client.set_tag(run.info.run_id, EARLY_STOPPED_TAG, "true")
            client.set_terminated(run.info.run_id, status)
        try:
            values = decode(plain, trial.config)
        except (KeyError, IndexError, StopIteration):
            values = {}
        params = _number(result, "params")
        rows.append(
            TrialRow(
                trial_id=trial.trial_id,
                status=status,
                values=values,
                metric=_number(result, metric),
                latency_ms=_number(result, "latency_ms"),
                params=int(params) if params is not None else None,
                objective=_number(result, "objective"),
                epochs=int(result.get("epochs", 0) or 0),
                run_id=run.info.run_id if run is not None else None,
                error=(run.data.tags.get("plexa.error") if run is not None else None),
            )
        )
    return rows


def _number(result: dict[str, Any], key: str) -> float | None:
    value = result.get(key)
    return float(value) if isinstance(value, int | float) else None


def _best(rows: list[TrialRow], key: str, mode: str) -> TrialRow | None:
    finished = [r for r in rows if r.status == "FINISHED"]
    score = (lambda r: r.objective) if key == "objective" else (lambda r: r.metric)
    finished = [r for r in finished if score(r) is not None]
    if not finished:
        return None
    sign = 1.0 if mode == "max" else -1.0

    def rank(r: TrialRow) -> tuple[float, float]:  # a tie goes to the faster network
        return sign * score(r), -(r.latency_ms if r.latency_ms is not None else float("inf"))

    return max(finished, key=rank)


def _log_sweep(
    tracker: Tracker, rows: list[TrialRow], metric: str, mode: str, best: TrialRow | None
) -> None:
    """Counts, the trial table and the Pareto front on the sweep's own run."""
    from plexa.sweep import pareto

    counts = {s: sum(r.status == s for r in rows) for s in ("FINISHED", "FAILED", "KILLED")}
    tracker.log_metrics(
        {
            "sweep/trials": len(rows),
            "sweep/finished": counts["FINISHED"],
            "sweep/failed": counts["FAILED"],
            "sweep/early_stopped": counts["KILLED"],
            "sweep/pareto_size": len(pareto.front(rows, mode)),
        }
    )
    best_id = best.trial_id if best else None
    table = pareto.table(rows, metric, mode, best_id)
    tracker.log_text(table, "sweep/trials.md")
    tracker.log_text(
        json.dumps([r.__dict__ for r in rows], indent=1, default=str), "sweep/trials.json"
    )
    tracker.log_figure(pareto.figure(rows, metric, mode, best_id), "pareto.png")


def _best_trained(
    spec: PipelineSpec, tracker: Tracker, run_dir: Path, best: TrialRow, trials: list[Any]
) -> Trained:
    """The best trial's best checkpoint, reused (not retrained), with its metrics and values:
    from its run, else (a run on a server that went away) from its last report to Tune."""
    from plexa.sweep.space import apply

    best_spec = apply(spec, best.values)
    saved = checkpoint(run_dir / "trials" / best.trial_id, "best")
    (trial,) = [t for t in trials if t.trial_id == best.trial_id]
    reported = {k: v for k, v in (trial.last_result or {}).items() if isinstance(v, int | float)}
    if best.run_id:
        run = tracker.client().get_run(best.run_id)
        saved = Path(run.data.tags.get("plexa.checkpoint", saved))
        reported = dict(run.data.metrics)
    metrics = {k: float(v) for k, v in reported.items() if k.startswith(("test/", "best_"))}
    metrics.update({"latency_ms": best.latency_ms or 0.0, "params": float(best.params or 0)})
    if best.objective is not None:
        metrics["objective"] = best.objective
    tracker.set_tags(
        {"plexa.sweep.best_trial": best.trial_id, "plexa.sweep.best_run": best.run_id or ""}
    )
    tracker.log_params({f"best.{k}": json.dumps(v) for k, v in best.values.items()})
    return Trained(metrics, saved, None, spec=best_spec)
