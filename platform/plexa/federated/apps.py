"""The Flower ServerApp and ClientApp that train a pipeline's architecture plugin in rounds.

Both read a *job*: a JSON file the runner writes with the resolved pipeline, the MLflow run
and the run folder. In simulation the runner hands its path to `server_app(job)` and
`client_app(job)`; a deployment passes it as the run config key `job` to the module-level
`serverapp` and `clientapp` (the Flower app's components).

A client trains with plexa's own pieces (`plexa.assembly`, `plexa.training`'s Trainer and
in-memory data, `EpochSeed`) on its partition of the data plugin's training split; FedProx adds its
proximal term as a gradient hook, so no training loop is forked. The server evaluates the
global model centrally on the test split after every round and logs the round to MLflow.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from plexa.callbacks import EpochSeed
from plexa.errors import UserError
from plexa.federated import strategies
from plexa.federated.partition import partition

if TYPE_CHECKING:
    from flwr.app import MetricRecordValues

    from plexa.config import PipelineSpec
    from plexa.plugins import DataSplits

JOB_KEY = "job"  # run config key naming the job file in a deployment
GLOBAL_STATE = "global_state.pt"  # the final global model, in the run folder
ROUNDS_FILE = "rounds.json"  # per-round records, in the run folder
#: tests only: a partition id whose client fails every round; FAIL_MODE "raise" (default)
#: raises in the ClientApp, "exit" kills its process
FAIL_ENV = "PLEXA_FL_FAIL_PARTITION"
FAIL_MODE_ENV = "PLEXA_FL_FAIL_MODE"

RoundSink = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Job:
    """What both apps need to know, written once by the runner."""

    pipeline: str  # the resolved pipeline YAML
    run_id: str
    tracking_uri: str
    run_dir: str
    # the ServerApp logs each round itself (a deployment: it runs in another process); in a
    # simulation the runner logs the rounds it is handed through its own tracker
    log_rounds: bool = True

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.__dict__))
        return path

    @staticmethod
    def read(path: str | Path) -> Job:
        return Job(**json.loads(Path(path).read_text()))

    def spec(self) -> PipelineSpec:
        import yaml

        from plexa.config import validate

        return validate(yaml.safe_load(self.pipeline), f"pipeline of run {self.run_id}")


def exchanged(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point state the federation averages (weights, BatchNorm statistics);
    integer buffers such as BatchNorm's batch counters stay local."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if v.is_floating_point()}


def to_record(module: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord(exchanged(module))


def load_record(module: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Load a global model; BatchNorm variances are clamped at zero, since central DP's noise
    (added to every exchanged tensor) can push a small variance below it (post-processing:
    the privacy guarantee is unchanged)."""
    state = {k: torch.as_tensor(v.numpy()) for k, v in arrays.items()}
    module.load_state_dict(state, strict=False)
    with torch.no_grad():
        for sub in module.modules():
            running_var = getattr(sub, "running_var", None)
            if isinstance(running_var, torch.Tensor):
                running_var.clamp_(min=0)


def accelerator(spec: PipelineSpec) -> str:
    """One client's or the server's device: what `compute.accelerator` resolves to here."""
    from plexa.training import placement

    return str(placement(spec.compute)["accelerator"])


def partitions(spec: PipelineSpec, data: DataSplits) -> list[Any]:
    fed = spec.federated
    assert fed is not None
    seed = spec.train.seed if fed.seed is None else fed.seed
    import numpy as np

    from plexa.streaming import NO_RAY_PARTS, labels, ray_source

    if ray_source(data.train) is not None:
        raise UserError(f"data plugin '{spec.data.plugin}': {NO_RAY_PARTS}")
    targets = labels(data.train) if data.spec.task == "classification" else None
    if targets is None:
        if data.spec.task == "classification":
            raise UserError(
                f"data plugin '{spec.data.plugin}' streams its training split without labels; "
                "federated partitions are computed from the labels alone (Stream.labels)"
            )
        targets = np.arange(len(data.train))
    return partition(np.asarray(targets), fed.clients, fed.partition, seed)


def make_trainer(spec: PipelineSpec, epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    """A Trainer for one client's round: no checkpoints, no validation (the server
    evaluates), one device; a round is too short for more."""
    from plexa.training import trainer

    return trainer(
        spec.train,
        epochs=epochs,
        callbacks=callbacks,
        clip=False,
        checkpointing=False,
        validation=False,
        accelerator=accelerator(spec),
        devices=1,
    )


# --------------------------------------------------------------------------- client


class ProximalTerm(L.Callback):
    """FedProx: adds mu * (w - w_global) to each gradient before the optimiser steps, the
    gradient of (mu / 2) * ||w - w_global||^2, for any module and optimiser."""

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self.anchor: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.anchor = [p.detach().clone() for p in pl_module.parameters()]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        for param, anchor in zip(pl_module.parameters(), self.anchor, strict=True):
            if param.grad is not None:
                param.grad.add_(param.detach() - anchor, alpha=self.mu)


@dataclass
class _ClientState:
    spec: PipelineSpec
    data: DataSplits
    parts: list[Any]
    module: L.LightningModule


_CLIENTS: dict[str, _ClientState] = {}  # per process (a Ray actor serves many partitions)


def _client_state(job_path: str) -> _ClientState:
    if job_path not in _CLIENTS:
        from plexa.quiet import quiet_libraries

        quiet_libraries()
        from plexa.assembly import build, load_data

        spec = Job.read(job_path).spec()
        data = load_data(spec)
        _CLIENTS[job_path] = _ClientState(
            spec, data, partitions(spec, data), build(spec, data).module
        )
    return _CLIENTS[job_path]


def _maybe_fail(partition_id: int) -> None:
    """Fault injection for tests (see FAIL_ENV)."""
    if os.environ.get(FAIL_ENV, "") != str(partition_id):
        return
    if os.environ.get(FAIL_MODE_ENV, "raise") == "exit":
        os._exit(17)
    raise RuntimeError(f"injected failure of client {partition_id} ({FAIL_ENV})")


def train_client(job_path: str, msg: Message, context: Context) -> Message:
    """One round on one client: load the global model, train local epochs, reply."""
    import numpy as np

    from plexa.plugins import DataSplits
    from plexa.streaming import subset
    from plexa.training import data_module

    started = time.perf_counter()
    state = _client_state(job_path)
    spec, fed = state.spec, state.spec.federated
    assert fed is not None
    partition_id = int(context.node_config["partition-id"])
    _maybe_fail(partition_id)
    config = msg.content[strategies.CONFIG_KEY]
    server_round = int(config["server-round"])  # type: ignore[arg-type]

    idx = state.parts[partition_id]
    own = subset(state.data.train, np.asarray(idx))  # a stream reads only this client's part
    data = DataSplits(state.data.spec, own, own, own)
    base = spec.train.seed if fed.seed is None else fed.seed
    seed = base * 1_000_003 + server_round * 10_007 + partition_id
    train = spec.train.model_copy(update={"seed": seed, "max_epochs": fed.local_epochs})

    module = state.module
    load_record(module, msg.content[strategies.ARRAYS_KEY])  # type: ignore[arg-type]
    mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    callbacks: list[L.Callback] = [EpochSeed(seed)]
    if mu > 0:
        callbacks.append(ProximalTerm(mu))
    torch.manual_seed(seed)
    trainer = make_trainer(spec, fed.local_epochs, callbacks)
    trainer.fit(module, datamodule=data_module(module, data, train, spec.data.loader))

    metrics: dict[str, MetricRecordValues] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
    }
    metrics["num-examples"] = len(idx)
    metrics[strategies.PARTITION_KEY] = partition_id
    metrics["seconds"] = time.perf_counter() - started
    content = RecordDict(
        {strategies.ARRAYS_KEY: to_record(module), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


def client_app(job_path: str | None = None) -> ClientApp:
    """The ClientApp; without `job_path` it reads the job from the run config."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_client(job_path or str(context.run_config[JOB_KEY]), msg, context)

    return app


# --------------------------------------------------------------------------- server


class CentralEvaluation:
    """The strategy's evaluate_fn: test the global model on the test split, and log the round
    (server metrics, aggregated and per-client metrics, failures, seconds) to MLflow."""

    def __init__(self, job: Job, strategy: strategies.Observed, sinks: list[RoundSink]) -> None:
        from plexa.assembly import build, load_data
        from plexa.tracking import Tracker

        self.job, self.strategy, self.sinks = job, strategy, sinks
        self.spec = job.spec()
        self.data = load_data(self.spec)
        self.module = build(self.spec, self.data).module
        # a separate process (a deployment's ServerApp) may be stopped at any moment
        self.tracker = (
            Tracker(job.run_id, job.tracking_uri, synchronous=True) if job.log_rounds else None
        )
        self.history: list[dict[str, float]] = []

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_record(self.module, arrays)
        metrics = {f"server/{k}": v for k, v in self.test().items()}
        record = self.strategy.rounds.get(server_round)
        if record is not None:
            metrics["round_seconds"] = time.perf_counter() - record.started
            metrics["clients/sampled"] = record.sampled
            metrics["clients/replied"] = record.replied
            metrics["clients/failed"] = record.failed
            metrics.update({f"clients/{k}": v for k, v in record.aggregated.items()})
            for pid, values in record.clients.items():
                metrics.update({f"client_{pid}/{k}": v for k, v in values.items()})
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=server_round)
        self.history.append({"round": server_round, **metrics})
        for sink in self.sinks:
            sink(server_round, metrics)
        return MetricRecord({k: v for k, v in metrics.items() if k.startswith("server/")})

    def test(self) -> dict[str, float]:
        from plexa.training import test

        return test(
            self.module, self.data, self.spec.train, accelerator=accelerator(self.spec), devices=1
        )


def serve(job_path: str, grid: Grid, sinks: list[RoundSink]) -> None:
    """The ServerApp's body: run every round, then keep the global model and the history."""
    from plexa.quiet import quiet_libraries

    quiet_libraries()
    job = Job.read(job_path)
    spec = job.spec()
    fed = spec.federated
    assert fed is not None
    random.seed(spec.train.seed if fed.seed is None else fed.seed)  # Flower samples with it
    strategy = strategies.build(fed)
    evaluate = CentralEvaluation(job, strategy, sinks)
    train_config = ConfigRecord({"local-epochs": fed.local_epochs})
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(evaluate.module),
        num_rounds=fed.rounds,
        timeout=fed.round_timeout,
        train_config=train_config,
        evaluate_fn=evaluate,
    )
    if len(result.arrays):
        load_record(evaluate.module, result.arrays)
    run_dir = Path(job.run_dir)
    torch.save(evaluate.module.state_dict(), run_dir / GLOBAL_STATE)
    (run_dir / ROUNDS_FILE).write_text(json.dumps(evaluate.history))


def server_app(job_path: str | None = None, sinks: list[RoundSink] | None = None) -> ServerApp:
    """The ServerApp; without `job_path` it reads the job from the run config."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(job_path or str(context.run_config[JOB_KEY]), grid, list(sinks or []))

    return app


# the components of the Flower app a deployment runs (pyproject: tool.flwr.app.components)
serverapp = server_app()
clientapp = client_app()
