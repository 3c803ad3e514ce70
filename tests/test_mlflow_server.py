"""plexa against a real MLflow tracking server, set up as deploy/compose runs it: PostgreSQL as
its backend store, proxied artifact storage, basic auth; a pipeline logging over HTTP, and the
server dying in the middle of a run.

One PostgreSQL and one server for the module (starting them costs ~15 s on two cores); the
failover test kills the server and starts it again on the same address and stores."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from plexa.events import Event
from tests.conftest import BIN, PIPELINES, plexa
from tests.mlflow_server import (
    MlflowServer,
    Postgres,
    mlflow_server,
    postgres,
    postgres_bin,
)
from tests.test_deploy import readme_block

pytestmark = pytest.mark.slow

WINE = str(PIPELINES / "wine-mlp.yaml")
TINY = ["train.limit_batches=2", "train.batch_size=32"]


@pytest.fixture(scope="module")
def database() -> Iterator[Postgres]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed here (scripts/system-deps installs it on Debian)")
    with postgres() as started:
        yield started


@pytest.fixture(scope="module")
def server(database: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(database.uri, folder, auth=True) as started:
        yield started


def _only_run(client, experiment: str):  # -> mlflow.entities.Run
    """The experiment's one top-level run (a sweep's trials are nested under it)."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _cli(*args: str):  # -> click.testing.Result
    """The `plexa` command in this process (for the quick cases: no start-up to pay)."""
    from typer.testing import CliRunner

    from plexa.cli import app

    return CliRunner().invoke(app, list(args))


def _predicts(uri: str, model_uri: str) -> None:
    """The registered ONNX model loads from the server and computes class scores."""
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    scores = model.predict(np.zeros((2, 13), dtype=np.float32))
    if isinstance(scores, dict):
        scores = next(iter(scores.values()))
    assert np.asarray(scores).shape == (2, 3)


def test_a_pipeline_logs_everything_to_the_server(
    server: MlflowServer, database: Postgres, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/README.md's commands (MLFLOW_TRACKING_URI and the basic-auth login, `plexa run`,
    `plexa runs`) against the server: params, per-epoch metrics, artifacts (stored by the
    server in its artifact folder), the ONNX model and its registered version, all read back
    through MLflow's own client; the run itself is a row in PostgreSQL. Without credentials
    the server refuses a client."""
    import mlflow
    import psycopg2
    import requests
    from mlflow.entities import LoggedModelStatus

    refused = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.status_code == 401

    # the README's block, as written, but against this server and with a tiny training
    script = readme_block("shared-server-run").replace("http://127.0.0.1:5000", server.url)
    tiny = " ".join([*TINY, "train.max_epochs=2"])
    script = re.sub(r"^(plexa run \S+)", rf"\1 {tiny}", script, flags=re.M)
    (workdir / "pipelines").symlink_to(PIPELINES)
    (workdir / "deploy" / "compose").mkdir(parents=True)
    user, password = server.credentials or ("", "")
    assert f"MLFLOW_TRACKING_USERNAME={user}" in script  # the README's login is the admin's
    (workdir / "deploy" / "compose" / ".env").write_text(f"MLFLOW_ADMIN_PASSWORD={password}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    (workdir / "mlflow.db").unlink()  # the fixture's empty store: none, as a user would have
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wine-mlp" in done.stdout and "FINISHED" in done.stdout  # `plexa runs` lists it
    assert not (workdir / "mlflow.db").exists()  # nothing went to a local store

    for key, value in server.client_env().items():  # this test's own client logs in too
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(server.url)
    run = _only_run(client, "tabular")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_epochs"] == "2"
    assert run.data.params["model.plugin"] == "mlp"
    assert int(run.data.params["data.train_size"]) > 100
    assert run.data.tags["plexa.pipeline"] == "wine-mlp"
    assert _steps(client, run_id, "val/loss") == [0, 1]
    assert {"test/acc", "test/loss", "export/parity_max_abs_diff"} <= set(run.data.metrics)

    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"pipeline.yaml", "plots", "checkpoints"} <= listed
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png"} <= plots
    assert list(server.artifacts.rglob("best.ckpt"))  # proxied: the server stored the file

    versions = client.search_model_versions("name = 'wine-mlp'")
    assert [(str(v.version), v.run_id, v.status) for v in versions] == [("1", run_id, "READY")]
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert len(models) == 1 and models[0].status == LoggedModelStatus.READY
    _predicts(server.url, "models:/wine-mlp/1")

    # the RayService's builder (deploy/k8s/rayservice.yaml) serves this registered model,
    # fetched into the folder every node shares
    from ray import serve

    from plexa.rayservice import app

    cache = workdir / "serve-cache"
    monkeypatch.setenv("PLEXA_SERVE_CACHE", str(cache))
    args = {"targets": ["models:/wine-mlp/1"], "tracking_uri": server.url, "replicas": 2}
    application = app(args)
    assert isinstance(application, serve.Application)
    assert len(list(cache.rglob("model.onnx"))) == 1

    connection = psycopg2.connect(database.uri.replace("+psycopg2", ""))
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cursor.fetchall() == [("FINISHED",)]
    finally:
        connection.close()


# per runner: how it is chosen, the progress event after which the server is killed, and a
# per-step metric with the steps the run must hold (epochs; rounds, 0 the initial model)
RUNNERS = {
    "local": ([], "epoch", "val/loss", [0, 1, 2]),
    "ray": (["compute.runner=ray", "compute.workers=1"], "epoch", "val/loss", [0, 1, 2]),
    "federated": (
        ["federated.clients=2", "federated.rounds=3", "federated.local_epochs=1"],
        "round",
        "server/test/loss",
        [0, 1, 2, 3],
    ),
    # the server dies once the first trial has ended: the second logs to the local store
    "sweep": (
        ["sweep.trials=2", "sweep.concurrency=1", "sweep.default_space=false",
         "sweep.space={train.optimizer.lr: {choice: [0.01, 0.02]}}"],
        "trial",
        "sweep/trials",
        [0],
    ),  # fmt: skip
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_a_server_that_dies_mid_run_loses_nothing(
    runner: str,
    server: MlflowServer,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's promise: the server is killed after the first epoch; training finishes,
    the run goes on in the local offline store (complete: every epoch, the ONNX model, its
    registered version), plexa prints the `plexa sync` command, and that exact command copies
    it into the server's run once the server is back. On Ray the epochs reach the run through
    the driver's relay, which must fail over with it."""
    import mlflow

    import plexa as plexa_api
    from plexa.tracking_failover import REMOTE_RUN_TAG, offline_uri

    for key, value in server.client_env().items():
        monkeypatch.setenv(key, value)
    # fail over after one failed request instead of MLflow's default ~4 minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    experiment, model = f"failover-{runner}", f"wine-failover-{runner}"
    placement, kill_after, per_step, steps = RUNNERS[runner]
    spec = plexa_api.load_pipeline(
        WINE,
        [*TINY, "train.max_epochs=3", f"tracking.uri={server.url}", *placement,
         f"tracking.experiment={experiment}", f"export.register_as={model}"],
    )  # fmt: skip

    def kill_server_after_first_epoch(event: Event) -> None:
        if event.kind == kill_after and event.index == 0:  # the first epoch, or round 1
            server.stop()

    try:
        with caplog.at_level(logging.WARNING, logger="plexa.tracking"):
            result = plexa_api.run(spec, sinks=[kill_server_after_first_epoch])
    finally:
        if not server.alive():  # the server comes back on its address, whatever happened
            server.start()
    # from here on the server is up again: MLflow's usual patience (a loaded machine answers
    # the first requests of a fresh server slowly)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    assert result.status == "FINISHED" and result.export is not None
    advice = [r.getMessage() for r in caplog.records if "plexa sync" in r.getMessage()]
    assert len(advice) == 1, [r.getMessage() for r in caplog.records]
    command = advice[0].split("Copy it to the server with: ")[1]
    assert command == f"plexa sync --from {offline_uri()} --to {server.url}"

    # nothing lost: the offline store holds the whole run, registered model included
    offline = mlflow.MlflowClient(offline_uri())
    local = _only_run(offline, experiment)
    assert local.data.tags[REMOTE_RUN_TAG] == result.run_id
    assert local.info.status == "FINISHED"
    assert _steps(offline, local.info.run_id, per_step) == steps
    assert local.data.params["train.max_epochs"] == "3"
    versions = offline.search_model_versions(f"name = '{model}'")
    assert [str(v.version) for v in versions] == ["1"]

    # the printed command syncs the run into the server's run
    client = mlflow.MlflowClient(server.url)
    assert client.get_run(result.run_id).info.status == "RUNNING"  # as the crash left it
    synced = plexa(*shlex.split(command)[1:], cwd=workdir)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"-> run {result.run_id} on {server.url}" in synced.stdout
    assert f"models:/{model}/1" in synced.stdout

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, result.run_id, per_step) == steps  # each epoch (round) once
    assert {"test/acc", "export/parity_max_abs_diff"} <= set(run.data.metrics)
    assert run.data.params["data.train_size"] == local.data.params["data.train_size"]
    contexts = [t.value for d in run.inputs.dataset_inputs for t in d.tags]
    assert sorted(contexts) == ["test", "train", "val"]  # each split's dataset input, once
    paths = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert "checkpoints/best.ckpt" in paths
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots
    if kill_after == "epoch":  # rounds have no train/val curves
        assert "plots/learning_curves.png" in plots
    versions = client.search_model_versions(f"name = '{model}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", result.run_id)]
    _predicts(server.url, f"models:/{model}/1")

    if runner == "sweep":  # both trials' runs, nested under the sweep's run on the server
        trials = client.search_runs(
            [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
        )
        assert sorted(t.info.status for t in trials) == ["FINISHED", "FINISHED"]

    again = _cli(*shlex.split(command)[1:])  # in process: no second start-up to pay for
    assert again.exit_code == 0 and "nothing to sync" in again.stdout, again.stdout


def test_a_server_unreachable_at_the_start_gets_the_run_later(
    server: MlflowServer,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens at tracking.uri: the run starts in the local store at once and `plexa
    sync --to` makes it a new run on a server later. Without offline runs sync has nothing to
    do; a store that does not exist is an error naming it."""
    import mlflow

    import plexa as plexa_api
    from plexa.tracking_failover import SYNCED_FROM_TAG, offline_uri
    from tests.ray_cluster import free_ports

    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    spec = plexa_api.load_pipeline(
        WINE, [*TINY, "train.max_epochs=1", f"tracking.uri={nowhere}", "export.onnx=false",
               "tracking.experiment=unreachable"],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="plexa.tracking"):
        result = plexa_api.run(spec)
    assert result.status == "FINISHED"
    assert any(f"plexa sync --from {offline_uri()} --to {nowhere}" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    local = _only_run(mlflow.MlflowClient(offline_uri()), "unreachable")
    assert local.info.run_id == result.run_id  # no server run: the local id names it

    for key, value in server.client_env().items():
        monkeypatch.setenv(key, value)
    synced = plexa("sync", "--to", server.url, cwd=workdir)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    client = mlflow.MlflowClient(server.url)
    remote = _only_run(client, "unreachable")
    assert remote.data.tags[SYNCED_FROM_TAG] == result.run_id
    assert remote.info.status == "FINISHED" and "test/acc" in remote.data.metrics
    assert _steps(client, remote.info.run_id, "val/loss") == [0]

    nothing = _cli("sync")
    assert nothing.exit_code == 0 and "nothing to sync" in nothing.stdout, nothing.stdout
    wrong = _cli("sync", "--from", f"sqlite:///{workdir}/none.db")
    assert wrong.exit_code == 2 and "none.db: no such store" in wrong.stdout, wrong.stdout
