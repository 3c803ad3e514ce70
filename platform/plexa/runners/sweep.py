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

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.errors import RunFailed
from plexa.runners import RunInterrupted, RunResult

if TYPE_CHECKING:
    from plexa.sweep.pareto import TrialRow
    from plexa.tracking import Tracker

EXPERIMENT = "sweep"
_TERMINAL = ("TERMINATED", "ERROR")


class SweepError(RunFailed, RuntimeError):
    """The sweep ran but left nothing to export: no trial finished."""


def target(spec: PipelineSpec) -> tuple[str, str]:
    """(metric, mode) the sweep optimises: the pipeline's, else the task's checkpoint metric."""
    sweep = spec.sweep
    assert sweep is not None
    metric = sweep.metric or ("val/acc" if spec.task() == "classification" else "val/loss")
    mode = sweep.mode or ("max" if metric.endswith(("/acc", "/r2")) else "min")
    return metric, mode


def _progress_callback() -> Any:
    """A Tune callback printing one line per trial as it ends (Tune's own output is off)."""
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            shown = "  ".join(
                f"{k} {result[k]:.4g}"
                for k in ("val/acc", "val/loss", "objective", "latency_ms", "params")
                if isinstance(result.get(k), int | float)
            )
            state = "finished" if result.get("finished") else "stopped"
            epochs = int(result.get("epochs", 0) or 0)
            print(f"trial {trial.trial_id} {state} after {epochs} epochs  {shown}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"trial {trial.trial_id} failed (recorded as FAILED in MLflow)")

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
    spec: PipelineSpec, setup: dict[str, Any], domains: dict[str, Any], storage: Path, resume: bool
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
            from plexa.orchestrator import ResumeError

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
            callbacks=[_progress_callback()],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _absolute_uri(uri: str) -> str:
    """Trials run in other processes (and folders): a relative sqlite path must not move."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


def run(spec: PipelineSpec, *, resume: str | None = None) -> RunResult:
    """Run (or resume) the sweep of `spec`; the result carries the best trial's test metrics
    and its registered ONNX export."""
    from plexa import tracking
    from plexa.orchestrator import runs_root
    from plexa.plugins import architectures, datasets
    from plexa.runners.ray import _ray, connect
    from plexa.sweep import space as spaces

    sweep = spec.sweep
    assert sweep is not None
    started = time.perf_counter()
    arch_cls = architectures.get(spec.model.plugin)
    plain, _ = spaces.merged(spec, arch_cls)
    metric, mode = target(spec)
    weights = dict(sweep.objectives)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray = _ray()
    with tracking.open_run(spec, resume) as tracker:
        run_dir = runs_root() / tracker.run_id
        tracker.set_tags({"plexa.run_dir": str(run_dir), "plexa.sweep": "true"})
        setup = {
            "spec": spec.model_dump(mode="json"),
            "space": plain,
            "parent_run_id": tracker.run_id,
            "uri": _absolute_uri(tracker.uri),
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
        embedded = connect(spec.compute)
        previous = signal.getsignal(signal.SIGINT)
        try:
            domains = spaces.flat_domains(plain)
            tuner = _tuner(spec, setup, domains, run_dir / "tune", resume is not None)
            grid = tuner.fit()
            trials = list(grid._experiment_analysis.trials)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)  # Tune's handler outlives the run
            if embedded:
                ray.shutdown()
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
        result = _finish_best(spec, tracker, run_dir, best)
    result.seconds = time.perf_counter() - started
    return result


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
    import mlflow

    from plexa.sweep.pareto import TrialRow
    from plexa.sweep.space import decode
    from plexa.sweep.trial import EARLY_STOPPED_TAG, PARENT_TAG, TRIAL_TAG

    client = mlflow.MlflowClient(tracker.uri)
    experiment = client.get_run(tracker.run_id).info.experiment_id
    nested = client.search_runs(
        [experiment], filter_string=f"tags.`{PARENT_TAG}` = '{tracker.run_id}'", max_results=5000
    )
    by_trial: dict[str, Any] = {}
    for run in sorted(nested, key=lambda r: r.info.start_time):
        by_trial[run.data.tags.get(TRIAL_TAG, "")] = run  # the latest attempt wins
    for run in nested:
        if run.info.status == "RUNNING" and by_trial.get(run.data.tags.get(TRIAL_TAG)) is not run:
            client.set_terminated(run.info.run_id, "KILLED")  # an attempt a resume replaced
    rows = []
    for trial in trials:
        run = by_trial.get(trial.trial_id)
        status = run.info.status if run is not None else "FAILED"
        if run is not None and status == "RUNNING":
            status = "FAILED" if trial.status == "ERROR" else "KILLED"
            if status == "KILLED":
                client.set_tag(run.info.run_id, EARLY_STOPPED_TAG, "true")
            client.set_terminated(run.info.run_id, status)
        result = trial.last_result or {}
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
    import mlflow

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
    mlflow.log_text(table, "sweep/trials.md")
    mlflow.log_text(
        json.dumps([r.__dict__ for r in rows], indent=1, default=str), "sweep/trials.json"
    )
    tracker.log_figure(pareto.figure(rows, metric, mode, best_id), "pareto.png")


def _finish_best(spec: PipelineSpec, tracker: Tracker, run_dir: Path, best: TrialRow) -> RunResult:
    """Reuse the best trial's best checkpoint: export it with the parity check, register it."""
    import mlflow

    from plexa.orchestrator import _load, assemble
    from plexa.sweep.space import apply

    best_spec = apply(spec, best.values)
    trial_run = mlflow.MlflowClient(tracker.uri).get_run(best.run_id or "")
    checkpoint = Path(
        trial_run.data.tags.get(
            "plexa.checkpoint", run_dir / "trials" / best.trial_id / "checkpoints" / "best.ckpt"
        )
    )
    metrics = {k: v for k, v in trial_run.data.metrics.items() if k.startswith(("test/", "best_"))}
    metrics.update({"latency_ms": best.latency_ms or 0.0, "params": float(best.params or 0)})
    if best.objective is not None:
        metrics["objective"] = best.objective
    tracker.log_metrics(metrics)
    tracker.set_tags(
        {"plexa.sweep.best_trial": best.trial_id, "plexa.sweep.best_run": best.run_id or ""}
    )
    mlflow.log_params({f"best.{k}": json.dumps(v) for k, v in best.values.items()})
    if checkpoint.exists():
        tracker.log_artifact(checkpoint, "checkpoints")
    exported = None
    if spec.export.onnx:
        from plexa.export import export_and_log

        arch, data, net, module = assemble(best_spec)
        _load(module, checkpoint)
        exported = export_and_log(
            arch.export_module(net), best_spec, data, run_dir / "export", tracker.run_id
        )
    return RunResult(
        pipeline=spec.name,
        run_id=tracker.run_id,
        status="FINISHED",
        metrics=metrics,
        best_checkpoint=checkpoint,
        export=exported,
        tracking_uri=tracker.uri,
    )
