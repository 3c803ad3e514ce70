"""The one flow every pipeline takes: spec -> plugins -> data -> model -> runner -> tracking ->
export. Thin assembly; each step lives in the module its name says."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.errors import UserError
from plexa.plugins import architectures, datasets
from plexa.runners import RunInterrupted, RunResult

if TYPE_CHECKING:
    import lightning as L

    from plexa.callbacks import EpochSink
    from plexa.export import ExportResult
    from plexa.plugins import DataSplits
    from plexa.tracking import Tracker

RUN_DIR_ENV = "PLEXA_RUN_DIR"  # tells DDP ranks > 0 where rank zero keeps checkpoints


class ResumeError(UserError, ValueError):
    pass


def runs_root() -> Path:
    return Path(os.environ.get("PLEXA_RUNS_DIR", "plexa-runs")).absolute()


def global_rank() -> int:
    """This process's rank; DDP worker processes are launched with these set."""
    for var in ("RANK", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def run(
    spec: PipelineSpec,
    *,
    resume: str | None = None,
    sinks: Sequence[EpochSink] = (),
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """Train, test, track and export one pipeline. `resume` is an MLflow run id."""
    if spec.federated is not None:  # Flower rounds, simulated; `plexa federate` also deploys
        if resume:
            raise ResumeError("a federated run cannot be resumed; start it again")
        from plexa.runners import federated

        return federated.run(spec)
    if getattr(spec, "sweep", None) is not None:  # architecture search: a run per trial
        from plexa.runners import sweep

        if resume:
            _check_resume(spec, resume)
        return sweep.run(spec, resume=resume)
    started = time.perf_counter()
    on_ray = spec.compute.runner == "ray"
    # Ray workers build their own copies; the driver builds its model after training, off the
    # path to the first epoch
    built = None if on_ray else assemble(spec)

    if global_rank() != 0:  # a DDP worker: train, and leave every side effect to rank zero
        from plexa.runners import local

        assert built is not None
        _, data, _, module = built
        run_dir = Path(os.environ[RUN_DIR_ENV])
        local.run(spec, data, module, run_dir, monitor=_monitor(module), callbacks=callbacks)
        return RunResult(spec.name, None, "FINISHED", model=module)

    if resume:
        _check_resume(spec, resume)
    owns_ray = _start_ray(spec) if on_ray else False
    try:
        return _tracked_run(spec, resume, sinks, callbacks, built, started, owns_ray)
    finally:
        if owns_ray:
            from plexa.runners import ray

            ray.shutdown()  # if the run failed before the Ray runner could


def _start_ray(spec: PipelineSpec) -> bool:
    """Start (or join) Ray while a thread warms the tracking store; True if Ray started here.

    A fresh MLflow store migrates its schema, seconds of Python, while `ray.init` mostly waits
    for its processes to come up: done side by side, the store costs the run's start-up
    nothing. The store's client is cached per URI, so the run opens it warm.
    """
    from concurrent.futures import ThreadPoolExecutor

    from plexa.runners import ray

    with ThreadPoolExecutor(1) as pool:
        pool.submit(_warm_store, spec.tracking.uri)
        return ray.connect(spec.compute)


def _warm_store(uri: str | None) -> None:
    import mlflow

    from plexa.tracking import resolve_uri

    with contextlib.suppress(Exception):  # opening the run reports a real problem with it
        mlflow.MlflowClient(resolve_uri(uri)).search_experiments(max_results=1)


def _tracked_run(
    spec: PipelineSpec,
    resume: str | None,
    sinks: Sequence[EpochSink],
    callbacks: Sequence[L.Callback],
    built: Any,
    started: float,
    owns_ray: bool,
) -> RunResult:
    """One pipeline's MLflow run: train on the chosen runner, then test, log and export."""
    from plexa import tracking

    on_ray = spec.compute.runner == "ray"
    with tracking.open_run(spec, resume) as tracker:
        run_dir = runs_root() / tracker.run_id
        os.environ[RUN_DIR_ENV] = str(run_dir)
        resume_from = _checkpoint(tracker.run_id, run_dir, "last") if resume else None
        try:
            if on_ray:
                from plexa.runners import ray

                trained = ray.run(
                    spec,
                    run_dir,
                    tracker=tracker,
                    callbacks=callbacks,
                    resume_from=resume_from,
                    owns_ray=owns_ray,
                    sinks=[tracker.epoch_sink, *sinks],
                )
                built = assemble(spec)
                _load(built[3], trained.best_checkpoint or trained.last_checkpoint)
            else:
                from plexa.runners import local

                assert built is not None
                if not resume:
                    _log_setup(tracker, built[3], built[1], run_dir)
                trained = local.run(
                    spec,
                    built[1],
                    built[3],
                    run_dir,
                    monitor=_monitor(built[3]),
                    sinks=[tracker.epoch_sink, *sinks],
                    callbacks=callbacks,
                    resume_from=resume_from,
                )
        except RunInterrupted as exc:
            if exc.last_checkpoint and exc.last_checkpoint.exists():
                tracker.log_artifact(exc.last_checkpoint, "checkpoints")
            raise RunInterrupted(tracker.run_id, exc.last_checkpoint) from None

        arch, data, net, module = built
        if on_ray and not resume:
            _log_setup(tracker, module, data, run_dir)
        tracker.log_metrics(trained.metrics)
        _log_results(tracker, net, data)
        for ckpt in (trained.best_checkpoint, trained.last_checkpoint):
            if ckpt is not None:
                tracker.log_artifact(ckpt, "checkpoints")
        exported = None
        if spec.export.onnx:
            from plexa.export import export_onnx, log_onnx

            exported = export_onnx(
                arch.export_module(net), spec, data, run_dir / "export", tracker.run_id
            )
            exported = tracker.guarded(
                "the ONNX model", lambda: log_onnx(exported, spec, data.spec)
            )

    return RunResult(
        pipeline=spec.name,
        run_id=tracker.run_id,
        status="FINISHED",
        metrics=trained.metrics,
        best_checkpoint=trained.best_checkpoint,
        last_checkpoint=trained.last_checkpoint,
        export=exported,
        seconds=time.perf_counter() - started,
        tracking_uri=tracker.uri,
        model=module,
    )


def _monitor(module: Any) -> tuple[str, str]:
    """The metric a module's best checkpoint follows: its own, else validation loss."""
    return getattr(module, "monitor", ("val/loss", "min"))


def _load(module: Any, checkpoint: Path | None) -> None:
    import torch

    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])


def _check_resume(spec: PipelineSpec, run_id: str) -> None:
    """Only an unfinished run of the very same pipeline can be continued exactly."""
    import yaml

    from plexa import tracking

    run = tracking.get_run(run_id, spec.tracking.uri)
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; nothing to resume")
    logged = tracking.flatten(yaml.safe_load(tracking.logged_pipeline(run_id, spec.tracking.uri)))
    now = tracking.flatten(yaml.safe_load(spec.to_yaml()))
    changed = sorted(k for k in logged.keys() | now.keys() if logged.get(k) != now.get(k))
    if changed:
        raise ResumeError(
            f"run {run_id} was started with a different pipeline; differing keys: "
            + ", ".join(changed)
        )


def _checkpoint(run_id: str, run_dir: Path, name: str) -> Path:
    """The run's own checkpoint file, or the copy logged to MLflow when the folder is gone."""
    local = run_dir / "checkpoints" / f"{name}.ckpt"
    if local.exists():
        return local
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"checkpoints/{name}.ckpt", dst_path=str(run_dir)
        )
    except Exception as exc:
        raise ResumeError(
            f"run {run_id} has no {name} checkpoint (looked in {local} and the run's artifacts)"
        ) from exc
    return Path(path)


def assemble(spec: PipelineSpec) -> tuple[Any, DataSplits, Any, L.LightningModule]:
    """Plugins -> data -> network -> LightningModule, seeded so weights start the same."""
    import lightning as L

    from plexa.tasks import wrap

    arch = architectures.create(spec.model.plugin)
    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    data = datasets.create(spec.data.plugin).load(spec.data_config(), spec.train.seed)
    net = arch.build(spec.model_config_(), data.spec)
    return arch, data, net, wrap(net, data.spec.task, spec.train)


def export_run(run_id: str, tracking_uri: str | None = None) -> ExportResult:
    """Rebuild a finished run's model from its logged pipeline and best checkpoint, export it
    to ONNX again and log it to the same run."""
    import yaml

    from plexa import tracking
    from plexa.config import validate
    from plexa.export import export_and_log

    run = tracking.get_run(run_id, tracking_uri)
    raw = yaml.safe_load(tracking.logged_pipeline(run_id, tracking_uri))
    spec = validate(raw, f"pipeline of run {run_id}")
    if tracking_uri:
        spec.tracking.uri = tracking_uri
    arch, data, net, module = assemble(spec)
    run_dir = Path(run.data.tags.get("plexa.run_dir", runs_root() / run_id))
    try:
        ckpt = _checkpoint(run_id, run_dir, "best")
    except ResumeError:
        ckpt = _checkpoint(run_id, run_dir, "last")
    _load(module, ckpt)
    with tracking.reopen(run_id, spec.tracking.uri):
        return export_and_log(arch.export_module(net), spec, data, run_dir / "export", run_id)


def _log_setup(tracker: Tracker, module: Any, data: DataSplits, run_dir: Path) -> None:
    tracker.log_params(
        {
            "model.parameters": sum(p.numel() for p in module.parameters()),
            "data.train_size": len(data.train),
            "data.val_size": len(data.val),
            "data.test_size": len(data.test),
        }
    )
    tracker.set_tags({"plexa.run_dir": str(run_dir)})


def _log_results(tracker: Tracker, net: Any, data: DataSplits) -> None:
    """Learning curves from the store (complete across resumes) and, for a classifier, the
    confusion matrix of the trained network on the test split."""
    from plexa import plots

    names = [f"{s}/{m}" for s in ("train", "val") for m in ("loss", "acc", "r2", "mae")]
    history = {k: v for k, v in tracker.history(names).items() if v}
    if history:
        tracker.log_figure(plots.curves(history), "learning_curves.png")
    if data.spec.task == "classification":
        import torch

        from plexa.loaders import to_tensors

        net.eval()
        x, _ = to_tensors(data.test, next(net.parameters()).device)
        with torch.no_grad():
            predicted = torch.cat([net(b).argmax(1).cpu() for b in x.split(1024)])
        names_ = data.spec.class_names or tuple(str(i) for i in range(data.spec.output_size))
        figure = plots.confusion(data.test.y.tolist(), predicted.tolist(), names_)
        tracker.log_figure(figure, "confusion_matrix.png")
