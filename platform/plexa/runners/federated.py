"""The federated runner: Flower rounds of a pipeline, simulated on Flower's Ray backend inside
this process, or deployed as a SuperLink and SuperNodes in separate processes on loopback.

One MLflow run per pipeline, as for every runner: the partition plot before the first round,
each round's metrics from the ServerApp (step = round), then the final global model tested,
checkpointed, exported to ONNX with the parity check and registered.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.runners import RunResult

if TYPE_CHECKING:
    import lightning as L

    from plexa.federated.apps import RoundSink
    from plexa.plugins import DataSplits
    from plexa.tracking import Tracker


def run(
    spec: PipelineSpec, *, deploy: bool = False, sinks: Sequence[RoundSink] = ()
) -> RunResult:
    """Run the pipeline's `federated:` rounds and return the shared RunResult.

    `sinks` get (round, metrics) after each round's central evaluation; a deployed ServerApp
    runs in another process, so there they are read back from MLflow once a second.
    """
    import torch

    from plexa import orchestrator, tracking
    from plexa.federated import apps

    fed = spec.federated
    if fed is None:
        raise ValueError(f"pipeline '{spec.name}' has no federated: section")
    started = time.perf_counter()
    with tracking.open_run(spec) as tracker:
        run_dir = orchestrator.runs_root() / tracker.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        data = apps.load_data(spec)
        parts = apps.partitions(spec, data)
        module = apps.build_module(spec, data)
        orchestrator._log_setup(tracker, module, data, run_dir)
        tracker.set_tags({"plexa.runner": "federated", "plexa.federated.mode": _mode(deploy)})
        _log_partition(tracker, data, parts)

        job = apps.Job(spec.to_yaml(), tracker.run_id, tracker.uri, str(run_dir))
        job_path = job.write(run_dir / "job.json")
        if deploy:
            from plexa.federated import deploy as deployment

            deployment.run(
                job_path,
                fed.clients,
                fed.rounds,
                run_dir / "deploy",
                fed.round_timeout,
                on_wait=_RoundPoller(tracker, list(sinks)),
            )
        else:
            simulate(job_path, spec, list(sinks))
        final = run_dir / apps.GLOBAL_STATE
        if not final.exists():
            raise RuntimeError(f"the ServerApp ended without writing the global model ({final})")
        module.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
        checkpoint = run_dir / "checkpoints" / "best.ckpt"  # what `plexa export` reloads
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": module.state_dict()}, checkpoint)
        tracker.log_artifact(checkpoint, "checkpoints")
        tracker.log_artifact(run_dir / apps.ROUNDS_FILE, "federated")

        metrics = _test(spec, module, data)
        tracker.log_metrics(metrics)
        net = module.net if hasattr(module, "net") else module
        orchestrator._log_results(tracker, net, data)
        exported = None
        if spec.export.onnx:
            from plexa.export import export_and_log
            from plexa.plugins import architectures

            arch = architectures.create(spec.model.plugin)
            exported = export_and_log(
                arch.export_module(net), spec, data, run_dir / "export", tracker.run_id
            )

    return RunResult(
        pipeline=spec.name,
        run_id=tracker.run_id,
        status="FINISHED",
        metrics=metrics,
        best_checkpoint=checkpoint,
        last_checkpoint=checkpoint,
        export=exported,
        seconds=time.perf_counter() - started,
        tracking_uri=tracker.uri,
        model=module,
    )


def _mode(deploy: bool) -> str:
    return "deploy" if deploy else "simulation"


def simulate(job_path: Path, spec: PipelineSpec, sinks: list[RoundSink]) -> None:
    """Flower's simulation engine with its Ray backend, embedded in this process."""
    from flwr.simulation import run_simulation

    from plexa.federated.apps import client_app, server_app

    fed = spec.federated
    assert fed is not None
    quiet = logging.getLogger("flwr")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    backend_config = {
        "client_resources": {"num_cpus": fed.cpus_per_client, "num_gpus": fed.gpus_per_client},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "logging_level": "ERROR",
            "log_to_driver": True,
            "include_dashboard": False,
        },
    }
    try:
        run_simulation(
            server_app=server_app(str(job_path), sinks),
            client_app=client_app(str(job_path)),
            num_supernodes=fed.clients,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    finally:
        quiet.setLevel(level)


def _test(spec: PipelineSpec, module: L.LightningModule, data: DataSplits) -> dict[str, float]:
    """Test metrics of the final global model, as a local run reports them."""
    from plexa.federated.apps import make_trainer
    from plexa.runners.local import memory_data

    results = make_trainer(spec, 1, []).test(
        module, datamodule=memory_data(module, data, spec.train), verbose=False
    )
    return {k: float(v) for k, v in results[0].items()} if results else {}


def _log_partition(tracker: Tracker, data: DataSplits, parts: list[Any]) -> None:
    """The partition plot (label counts per client) and each client's size."""
    import mlflow

    from plexa import plots
    from plexa.federated.partition import label_counts

    sizes = [len(p) for p in parts]
    mlflow.log_params(
        {
            "federated.client_size_min": min(sizes),
            "federated.client_size_max": max(sizes),
        }
    )
    if data.spec.task == "classification":
        names = data.spec.class_names or tuple(str(i) for i in range(data.spec.output_size))
        counts = label_counts(data.train.y, parts, len(names))
        tracker.log_figure(plots.partition(counts, names), "partition.png")


class _RoundPoller:
    """Deployment mode: the ServerApp logs each round to MLflow from its own process; this
    reads new rounds back and hands them to the sinks, as the simulation does directly."""

    KEYS = (
        "server/test/loss",
        "server/test/acc",
        "clients/sampled",
        "clients/replied",
        "clients/failed",
        "round_seconds",
    )

    def __init__(self, tracker: Tracker, sinks: list[RoundSink]) -> None:
        self.tracker, self.sinks = tracker, sinks
        self.seen: set[int] = set()

    def __call__(self) -> None:
        if not self.sinks:
            return
        import mlflow

        client = mlflow.MlflowClient(self.tracker.uri)
        rounds: dict[int, dict[str, float]] = {}
        for key in self.KEYS:
            for point in client.get_metric_history(self.tracker.run_id, key):
                if point.step not in self.seen:
                    rounds.setdefault(point.step, {})[key] = point.value
        for step in sorted(rounds):
            if "server/test/acc" in rounds[step] or "server/test/loss" in rounds[step]:
                self.seen.add(step)
                for sink in self.sinks:
                    sink(step, rounds[step])
