"""Federated learning with Flower for real: partitioning, FedProx's proximal term, a simulated
run on Flower's Ray backend with a client that fails every round, and `plexa federate
--deploy` with a SuperLink and three SuperNodes as separate processes."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path

import mlflow
import numpy as np
import pytest

from plexa.config import ConfigError, PartitionSpec, load_pipeline, validate
from plexa.federated.partition import PartitionError, label_counts, partition

from .conftest import PIPELINES, plexa

pytestmark = pytest.mark.slow

PIPELINE = PIPELINES / "digits-federated.yaml"
LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 labels


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


# ------------------------------------------------------------------ partitioning (no Flower)


@pytest.mark.parametrize(
    "spec",
    [
        PartitionSpec(scheme="iid"),
        PartitionSpec(scheme="dirichlet", alpha=0.1),
        PartitionSpec(scheme="shards", labels_per_client=2),
    ],
    ids=["iid", "dirichlet", "shards"],
)
def test_partitions_cover_the_training_set_once_and_are_seeded(spec: PartitionSpec) -> None:
    parts = partition(LABELS, 10, spec, seed=3)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    again = partition(LABELS, 10, spec, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 10, spec, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_label_skew_follows_the_scheme() -> None:
    def labels_held(spec: PartitionSpec) -> float:
        counts = label_counts(LABELS, partition(LABELS, 10, spec, seed=0), 10)
        return float(np.mean((counts > 0).sum(axis=1)))

    iid = labels_held(PartitionSpec(scheme="iid"))
    skewed = labels_held(PartitionSpec(scheme="dirichlet", alpha=0.1))
    mild = labels_held(PartitionSpec(scheme="dirichlet", alpha=100.0))
    shards = labels_held(PartitionSpec(scheme="shards", labels_per_client=2))
    assert iid == 10 and mild == 10
    assert skewed < 5  # each client sees a few labels
    assert shards <= 2


def test_impossible_partitions_say_why() -> None:
    with pytest.raises(PartitionError, match="cannot be split over 600 clients"):
        partition(LABELS, 600, PartitionSpec(), seed=0)
    with pytest.raises(PartitionError, match="more than the 500 training samples"):
        partition(LABELS, 100, PartitionSpec(scheme="shards", labels_per_client=6), seed=0)


def test_federated_section_errors_carry_their_paths() -> None:
    raw = {
        "name": "bad",
        "data": {"plugin": "tabular", "params": {"dataset": "diabetes"}},
        "model": {"plugin": "mlp"},
        "federated": {
            "clients": 0,
            "strategy": "fedsgd",
            "fraction": 1.5,
            "partition": {"scheme": "dirichlet"},
            "privacy": {"noise_multiplier": -1, "clipping_norm": 1.0},
        },
    }
    with pytest.raises(ConfigError) as err:
        validate(raw)
    paths = {path for path, _ in err.value.problems}
    assert {
        "federated.clients",
        "federated.strategy",
        "federated.fraction",
        "federated.privacy.noise_multiplier",
        "federated.partition.scheme",  # dirichlet needs labels; diabetes is regression
    } <= paths
    with pytest.raises(ConfigError, match="krum needs more than"):
        load_pipeline(PIPELINE, ["federated.strategy=krum", "federated.byzantine=1"])


def test_federate_refuses_a_bad_section_before_starting(workdir: Path) -> None:
    done = plexa(
        "federate",
        str(PIPELINE),
        "--deploy",
        "--set",
        "federated.strategy=bogus",
        "--set",
        "federated.partition.alpha=-1",
        cwd=workdir,
    )
    assert done.returncode == 2
    assert "federated.strategy" in done.stdout and "federated.partition.alpha" in done.stdout
    assert not (workdir / "plexa-runs").exists()  # nothing started


def test_proximal_term_pulls_local_training_towards_the_global_model() -> None:
    """FedProx's term works through plexa's own training step (manual optimisation)."""
    import torch

    from plexa.assembly import build, load_data
    from plexa.federated.apps import ProximalTerm, make_trainer
    from plexa.training import data_module

    spec = load_pipeline(PIPELINE, ["train.limit_batches=5"])
    data = load_data(spec)

    def drift(mu: float) -> float:
        module = build(spec, data).module
        start = [p.detach().clone() for p in module.parameters()]
        callbacks = [ProximalTerm(mu)] if mu else []
        trainer = make_trainer(spec, 1, callbacks)
        trainer.fit(module, datamodule=data_module(module, data, spec.train))
        moved = zip(module.parameters(), start, strict=True)
        return sum(float((p.detach() - s).norm()) for p, s in moved)

    # with an SGD step, a huge mu makes each step undo itself; with AdamW the normalised
    # step still moves, but far less once the gradient is dominated by the pull back
    free, pulled = drift(0.0), drift(1e4)
    assert pulled < 0.6 * free, (free, pulled)
    assert torch.isfinite(torch.tensor(pulled))


# ------------------------------------------------------------------ strategies on real messages


def _round(strategy, values: list[float | None]):  # noqa: ANN001, ANN202
    """One aggregation over Flower messages: a reply per value, an error reply for None."""
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Error,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.supercore.task_identity import TaskIdentity

    from plexa.federated.strategies import RoundRecord

    # messages are stamped with the task they belong to; the simulation sets this the same way
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    zeros = ArrayRecord([np.zeros(4, dtype=np.float32)])
    sent = [
        Message(
            content=RecordDict({"arrays": zeros, "config": ConfigRecord({"server-round": 1})}),
            dst_node_id=10 + i,
            message_type=MessageType.TRAIN,
        )
        for i in range(len(values))
    ]
    inner = getattr(strategy.strategy, "strategy", strategy.strategy)
    if hasattr(inner, "current_arrays"):  # FedOpt family: the global model they step from
        inner.current_arrays = {k: a.numpy() for k, a in zeros.items()}
    if hasattr(strategy.strategy, "current_arrays") and inner is not strategy.strategy:
        strategy.strategy.current_arrays = zeros  # the DP wrapper clips updates against it
    replies = [
        Message(Error(code=0, reason="client raised"), reply_to=msg)
        if value is None
        else Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord([np.full(4, value, dtype=np.float32)]),
                    "metrics": MetricRecord(
                        {"num-examples": 10, "partition-id": i, "train/loss": value}
                    ),
                }
            ),
            reply_to=msg,
        )
        for i, (msg, value) in enumerate(zip(sent, values, strict=True))
    ]
    strategy.rounds[1] = RoundRecord(sampled=len(values))
    arrays, _ = strategy.aggregate_train(1, replies)
    return (None if arrays is None else arrays.to_numpy_ndarrays()[0]), strategy.rounds[1]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "krum"])
def test_every_strategy_aggregates_around_a_failed_client(name: str) -> None:
    from plexa.config import FederatedSpec
    from plexa.federated import strategies

    values = [1.0, 3.0, 2.0, 2.1, None]
    arrays, record = _round(strategies.build(FederatedSpec(clients=5, strategy=name)), values)
    assert record.sampled == 5 and record.replied == 4 and record.failed == 1
    assert set(record.clients) == {0, 1, 2, 3} and record.clients[1]["train/loss"] == 3.0
    assert arrays is not None and np.all(np.isfinite(arrays))
    expected = {"fedavg": 2.025, "fedprox": 2.025, "fedmedian": 2.05, "krum": 2.1}
    if name in expected:  # mean, median, and the update closest to its neighbours
        assert np.allclose(arrays, expected[name])
    else:  # a server optimiser steps from the global model (zeros) towards the mean
        assert np.all(arrays > 0) and np.all(arrays < 2.025)


def test_central_dp_clips_and_noises_the_aggregate() -> None:
    from plexa.config import FederatedSpec
    from plexa.federated import strategies

    def dp(noise: float, clip: float) -> FederatedSpec:
        privacy = {"noise_multiplier": noise, "clipping_norm": clip}
        return FederatedSpec(clients=3, strategy="fedavg", privacy=privacy)

    clipped, _ = _round(strategies.build(dp(0.0, 1.0)), [10.0, 10.0, 10.0])
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-5)  # each update clipped to 1
    noisy, _ = _round(strategies.build(dp(1.0, 1.0)), [10.0, 10.0, 10.0])
    assert not np.allclose(noisy, clipped)
    # Flower's DP wrapper refuses a round in which a client failed: the model stays as it was
    skipped, record = _round(strategies.build(dp(1.0, 1.0)), [1.0, 1.0, None])
    assert skipped is None and record.failed == 1


# ------------------------------------------------------------------ Flower, for real


def test_simulation_survives_a_failing_client(workdir: Path, monkeypatch) -> None:
    """Client 1 raises in every round; FedAvg aggregates the others and every round runs."""
    from plexa import orchestrator

    monkeypatch.setenv("PLEXA_FL_FAIL_PARTITION", "1")
    spec = load_pipeline(
        PIPELINE,
        [
            "federated.clients=3",
            "federated.rounds=2",
            "federated.strategy=fedavg",
            "train.limit_batches=3",
            "export.register_as=digits-fed-sim",
        ],
    )
    from plexa.events import render

    shown: list[str] = []  # what `plexa run` prints: the same events through the same render
    pythonpath = os.environ.get("PYTHONPATH")
    # `plexa run` of a federated pipeline simulates it
    result = orchestrator.run(spec, sinks=[lambda event: shown.append(render(event))])
    # Flower's Ray backend put this process's sys.path there; the runner puts it back
    assert os.environ.get("PYTHONPATH") == pythonpath
    rounds = [line for line in shown if line.startswith("round")]
    assert [r.split()[1] for r in rounds] == ["0/2", "1/2", "2/2"], shown  # as they end
    assert "clients 2/3 (1 failed)" in rounds[-1]
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["plexa.federated.mode"] == "simulation"
    assert [s for s, _ in history(result.run_id, "server/test/acc")] == [0, 1, 2]
    assert history(result.run_id, "clients/failed") == [(1, 1.0), (2, 1.0)]
    assert history(result.run_id, "clients/replied") == [(1, 2.0), (2, 2.0)]
    assert [s for s, _ in history(result.run_id, "round_seconds")] == [1, 2]
    metrics = run.data.metrics
    assert "client_0/train/loss" in metrics and "client_2/train/loss" in metrics
    assert "client_1/train/loss" not in metrics
    assert "clients/train/acc" in metrics
    # the global model moved: round 2's central test loss is below the initial model's
    losses = dict(history(result.run_id, "server/test/loss"))
    assert losses[2] < losses[0]
    final = dict(history(result.run_id, "server/test/acc"))[2]
    assert result.metrics["test/acc"] == pytest.approx(final)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "plots")}
    assert "plots/partition.png" in artifacts
    assert result.export.max_abs_diff <= 1e-4 and result.export.registered_version == "1"


def test_deploy_with_three_supernodes_and_central_dp(workdir: Path) -> None:
    """`plexa federate --deploy`: a SuperLink and 3 SuperNodes as real processes on loopback,
    central DP with fixed clipping, everything torn down afterwards."""
    done = plexa(
        "federate",
        str(PIPELINE),
        "--deploy",
        "--set",
        "federated.clients=3",
        "--set",
        "federated.rounds=2",
        "--set",
        "federated.strategy=fedavg",
        "--set",
        "federated.privacy.noise_multiplier=0.05",
        "--set",
        "federated.privacy.clipping_norm=5.0",
        "--set",
        "train.limit_batches=3",
        "--set",
        "export.onnx=false",  # the simulation test covers export and registration
        cwd=workdir,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["plexa.federated.mode"] == "deploy"
    assert run.data.params["federated.privacy.noise_multiplier"] == "0.05"
    assert run.data.params["federated.privacy.clipping_norm"] == "5.0"
    assert [s for s, _ in history(run_id, "server/test/acc")] == [0, 1, 2]
    assert history(run_id, "clients/replied") == [(1, 3.0), (2, 3.0)]
    assert {f"client_{i}/train/loss" for i in range(3)} <= set(run.data.metrics)
    assert (workdir / "plexa-runs" / run_id / "checkpoints" / "best.ckpt").exists()
    assert "round   2/2  server/test/loss" in done.stdout  # rounds reported as they end

    deploy = workdir / "plexa-runs" / run_id / "deploy"
    server_log = (deploy / "flwr-run.log").read_text()
    assert "central DP noise" in server_log  # Flower's DP wrapper clipped and noised
    for i in range(3):  # each SuperNode ran its own ClientApp process
        assert "flwr-clientapp" in (deploy / f"supernode-{i}.log").read_text()
    config = tomllib.loads((deploy / "flwr-home" / "config.toml").read_text())
    host, port = config["superlink"]["plexa-local"]["address"].split(":")
    with socket.socket() as sock:  # the SuperLink is gone
        assert sock.connect_ex((host, int(port))) != 0
