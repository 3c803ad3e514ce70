"""The runner contract and the steps every runner shares around its training.

A runner implements `train(job) -> Trained`: the part that differs between Lightning on this
machine, Ray Train workers, Flower rounds and Tune trials. `Runner.fit(job)` is the same for all
of them: train, then `finish` (test metrics, figures, checkpoints, the guarded ONNX export and
its registry version), and return the one `RunResult`. A runner logs only through `job.tracker`,
which carries the run id, so a tracking server that fails mid-run is survived by every runner.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from plexa import lineage
from plexa.assembly import Assembled, assemble, build, load_weights
from plexa.config import PipelineSpec
from plexa.errors import RunInterrupted
from plexa.events import Event, Sink
from plexa.runs import CHECKPOINTS, EXPORT

if TYPE_CHECKING:
    import lightning as L

    from plexa.export import ExportResult
    from plexa.plugins import DataSplits
    from plexa.tracking import Tracker


@dataclass
class Job:
    """Everything a runner is given: the pipeline, its open run and folder, whether it resumes
    (then `resume_from` is the last checkpoint, for runners that continue from one), where
    progress goes, and extra Lightning callbacks."""

    spec: PipelineSpec
    tracker: Tracker
    run_dir: Path
    resume: bool = False
    resume_from: Path | None = None
    sinks: Sequence[Sink] = ()
    callbacks: Sequence[L.Callback] = ()
    _setup_logged: bool = field(default=False, repr=False)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)

    def epoch_sink(self) -> Any:
        """An `EpochReport` sink (epoch, metrics) that emits epoch events."""
        total = self.spec.train.max_epochs

        def emit(epoch: int, metrics: dict[str, float]) -> None:
            self.emit(Event("epoch", epoch, total, metrics))

        return emit

    def log_setup(self, built: Assembled) -> None:
        """Model size and split sizes, once per run (a resumed run has them already)."""
        if self._setup_logged or self.resume:
            return
        self._setup_logged = True
        data = built.data
        self.tracker.log_params(
            {
                "model.parameters": sum(p.numel() for p in built.module.parameters()),
                "data.train_size": len(data.train),
                "data.val_size": len(data.val),
                "data.test_size": len(data.test),
            }
        )
        self.tracker.log_inputs(lineage.inputs(self.spec.data.plugin, data))


@dataclass
class Trained:
    """What a runner's training leaves for `finish`.

    `model` is None where training ran in other processes (Ray workers, Tune trials): `finish`
    then builds the pipeline and loads the best checkpoint, on `data` when the runner loaded
    it here already. `spec` is the pipeline that trained the model when it is not the job's own
    (a sweep's best trial)."""

    metrics: dict[str, float]
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    model: Assembled | None = None
    spec: PipelineSpec | None = None
    data: DataSplits | None = None


@dataclass
class RunResult:
    """What every runner returns."""

    pipeline: str
    run_id: str | None
    status: str  # FINISHED, KILLED
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics and best val
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    export: ExportResult | None = None
    seconds: float = 0.0
    tracking_uri: str | None = None
    model: Any = field(default=None, repr=False)  # the trained LightningModule, in process


class Runner(ABC):
    """One way of training a pipeline. Subclasses implement `train`; `check` refuses what the
    runner cannot do before anything starts, and `session` wraps the whole run (the Ray runners
    start Ray there, beside the tracking store's start-up)."""

    name: ClassVar[str]
    verb: ClassVar[str] = "training"  # what `plexa run` says it is doing
    # `--resume` continues from the run's last checkpoint (a sweep restores its Tune experiment)
    resumes_from_checkpoint: ClassVar[bool] = True

    def check(self, spec: PipelineSpec, resume: str | None) -> None:  # noqa: B027 - optional
        """Raise a UserError for a pipeline or resume this runner cannot run."""

    def session(self, spec: PipelineSpec) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def describe(self, spec: PipelineSpec) -> str:
        """One line for the terminal: what this run will do."""
        return (
            f"[cyan]{spec.name}[/cyan]: {spec.model.plugin} on {spec.data.plugin}, "
            f"{spec.train.max_epochs} epochs"
        )

    @abstractmethod
    def train(self, job: Job) -> Trained:
        """Train `job.spec`; raise RunInterrupted (with the last checkpoint) on Ctrl-C."""

    def fit(self, job: Job, started: float | None = None) -> RunResult:
        started = time.perf_counter() if started is None else started
        try:
            trained = self.train(job)
        except RunInterrupted as exc:
            last = exc.last_checkpoint
            if last is not None and last.exists():
                job.tracker.log_artifact(last, CHECKPOINTS)
            raise RunInterrupted(job.tracker.run_id, last) from None
        result = finish(job, trained)
        result.seconds = time.perf_counter() - started
        return result


def finish(job: Job, trained: Trained) -> RunResult:
    """The last steps of every run: test metrics, learning curves and confusion matrix, the
    checkpoints, and the ONNX export with its parity check (and its int8 copy, with
    `export.quantize`), logged and registered through the tracker's failover guard."""
    from plexa.export import export_and_log

    tracker, spec = job.tracker, trained.spec or job.spec
    built = trained.model
    if built is None:
        built = assemble(spec) if trained.data is None else build(spec, trained.data)
        load_weights(built.module, trained.best_checkpoint or trained.last_checkpoint)
    job.log_setup(built)
    tracker.log_metrics(trained.metrics)
    log_results(tracker, built)
    for checkpoint in dict.fromkeys((trained.best_checkpoint, trained.last_checkpoint)):
        if checkpoint is not None and checkpoint.exists():
            tracker.log_artifact(checkpoint, CHECKPOINTS)
    exported = None
    if job.spec.export.onnx:
        exported = export_and_log(
            built.export_module(), spec, built.data, job.run_dir / EXPORT, tracker
        )
    return RunResult(
        pipeline=job.spec.name,
        run_id=tracker.run_id,
        status="FINISHED",
        metrics=trained.metrics,
        best_checkpoint=trained.best_checkpoint,
        last_checkpoint=trained.last_checkpoint,
        export=exported,
        tracking_uri=tracker.uri,
        model=built.module,
    )


def log_results(tracker: Tracker, built: Assembled) -> None:
    """Learning curves from the store (complete across resumes) and, for a classifier, the
    confusion matrix of the trained network on the test split."""
    from plexa import plots

    names = [f"{s}/{m}" for s in ("train", "val") for m in ("loss", "acc", "r2", "mae")]
    history = {k: v for k, v in tracker.history(names).items() if v}
    if history:
        tracker.log_figure(plots.curves(history), "learning_curves.png")
    data, net = built.data, built.net
    if data.spec.task == "classification":
        import torch

        from plexa.streaming import iter_batches

        net.eval()
        device = next(net.parameters()).device
        truth: list[int] = []
        predicted: list[int] = []
        with torch.no_grad():
            for x, y in iter_batches(data.test, 1024):
                predicted += net(x.to(device)).argmax(1).cpu().tolist()
                truth += y.tolist()
        names_ = data.spec.class_names or tuple(str(i) for i in range(data.spec.output_size))
        figure = plots.confusion(truth, predicted, names_)
        tracker.log_figure(figure, "confusion_matrix.png")
