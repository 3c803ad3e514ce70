"""The federated runner: Flower rounds of a pipeline, simulated on Flower's Ray backend inside
this process, or deployed as a SuperLink and SuperNodes in separate processes on loopback.

One MLflow run per pipeline, as for every runner: the partition plot before the first round,
each round's metrics from the ServerApp (step = round), then the final global model tested,
checkpointed, exported to ONNX with the parity check and registered.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.config import PipelineSpec
from plexa.errors import ResumeError, RunFailed, UserError
from plexa.events import Event
from plexa.runners import register
from plexa.runners.base import Job, Runner, Trained
from plexa.runs import checkpoint

if TYPE_CHECKING:
    from plexa.federated.apps import RoundSink
    from plexa.plugins import DataSplits
    from plexa.tracking import Tracker


@register("federated")
class FederatedRunner(Runner):
    """Flower rounds, simulated in this process; `deploy=True` runs a SuperLink and one
    SuperNode per client as separate processes on loopback instead (`plexa federate
    --deploy`)."""

    name = "federated"
    verb = "federating"

    def __init__(self, deploy: bool = False) -> None:
        self.deploy = deploy

    def describe(self, spec: PipelineSpec) -> str:
        fed = spec.federated
        assert fed is not None
        mode = "SuperLink + SuperNode processes" if self.deploy else "simulation"
        return (
            f"[cyan]{spec.name}[/cyan]: {spec.model.plugin} on {spec.data.plugin}, "
            f"{fed.clients} clients ({fed.partition.scheme}), {fed.rounds} rounds of "
            f"{fed.strategy}, {mode}"
        )

    def check(self, spec: PipelineSpec, resume: str | None) -> None:
        if spec.federated is None:
            raise UserError("the federated runner needs a federated: section in the pipeline")
        if resume:
            raise ResumeError("a federated run cannot be resumed; start it again")
        from plexa.assembly import uses_ray

        if uses_ray(spec):
            from plexa.streaming import NO_RAY_PARTS

            raise UserError(
                f"data plugin '{spec.data.plugin}' returns Ray Data splits: {NO_RAY_PARTS}"
            )

    def train(self, job: Job) -> Trained:
        import torch

        from plexa.assembly import build, load_data
        from plexa.federated import apps
        from plexa.training import test

        spec, tracker, run_dir = job.spec, job.tracker, job.run_dir
        fed = spec.federated
        assert fed is not None
        run_dir.mkdir(parents=True, exist_ok=True)
        data = load_data(spec)
        parts = apps.partitions(spec, data)
        built = build(spec, data)
        job.log_setup(built)
        tracker.set_tags({"plexa.federated.mode": _mode(self.deploy)})
        _log_partition(tracker, data, parts)

        def round_sink(server_round: int, metrics: dict[str, float]) -> None:
            if not self.deploy:  # a deployed ServerApp logs its rounds itself
                tracker.log_metrics(metrics, step=server_round)
            job.emit(Event("round", server_round - 1, fed.rounds, metrics))

        task = apps.Job(
            spec.to_yaml(), tracker.run_id, tracker.active_uri, str(run_dir), self.deploy
        )
        job_path = task.write(run_dir / "job.json")
        if self.deploy:
            from plexa.federated import deploy as deployment

            deployment.run(
                job_path,
                fed.clients,
                fed.rounds,
                run_dir / "deploy",
                fed.round_timeout,
                on_wait=_RoundPoller(tracker, [round_sink]),
            )
        else:
            simulate(job_path, spec, [round_sink])
        final = run_dir / apps.GLOBAL_STATE
        if not final.exists():
            raise RunFailed(f"the ServerApp ended without writing the global model ({final})")
        module = built.module
        module.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
        saved = checkpoint(run_dir, "best")  # what `plexa export` reloads
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": module.state_dict()}, saved)
        tracker.log_artifact(run_dir / apps.ROUNDS_FILE, "federated")
        metrics = test(module, data, spec.train, accelerator=apps.accelerator(spec), devices=1)
        return Trained(metrics, saved, saved, built)


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
    # Flower's Ray backend sets PYTHONPATH to this process's whole sys.path for Ray's workers
    # and leaves it so: every later subprocess, a system tool's Python too, would import this
    # environment's packages
    pythonpath = os.environ.get("PYTHONPATH")
    try:
        run_simulation(
            server_app=server_app(str(job_path), sinks),
            client_app=client_app(str(job_path)),
            num_supernodes=fed.clients,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    finally:
        quiet.setLevel(level)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


def _log_partition(tracker: Tracker, data: DataSplits, parts: list[Any]) -> None:
    """The partition plot (label counts per client) and each client's size."""
    from plexa import plots
    from plexa.federated.partition import label_counts
    from plexa.streaming import labels

    sizes = [len(p) for p in parts]
    tracker.log_params(
        {
            "federated.client_size_min": min(sizes),
            "federated.client_size_max": max(sizes),
        }
    )
    targets = labels(data.train)
    if data.spec.task == "classification" and targets is not None:
        names = data.spec.class_names or tuple(str(i) for i in range(data.spec.output_size))
        counts = label_counts(targets, parts, len(names))
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
        rounds: dict[int, dict[str, float]] = {}
        for key, points in self.tracker.stored_history(list(self.KEYS)).items():
            for step, value in points:
                if step not in self.seen:
                    rounds.setdefault(step, {})[key] = value
        for step in sorted(rounds):
            if "server/test/acc" in rounds[step] or "server/test/loss" in rounds[step]:
                self.seen.add(step)
                for sink in self.sinks:
                    sink(step, rounds[step])
