"""plexa against a real two-node Ray cluster with token authentication: Ray Train workers placed
one per node, pipelines submitted as Ray jobs, and a jobs API that refuses requests without the
token. One cluster for the whole module (starting one costs ~15 s on two cores)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import PIPELINES, plexa
from tests.ray_cluster import RayCluster, ray_cluster

pytestmark = pytest.mark.slow

PIPELINE = str(PIPELINES / "digits-mlp.yaml")
QUICK = ["train.max_epochs=1", "export.onnx=false"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """A head and a second node, one CPU each, as separate `ray start` processes."""
    with ray_cluster(nodes=2, cpus_per_node=1) as started:
        yield started


def _store(workdir: Path) -> str:
    return f"tracking.uri=sqlite:///{workdir}/mlflow.db"


def _finished_runs(workdir: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
        if run.info.status == "FINISHED"
    ]


def test_jobs_api_refuses_requests_without_the_token(cluster: RayCluster) -> None:
    """No token: 401, wrong token: 403 (Ray's middleware); the right one is accepted."""
    jobs_url = f"{cluster.dashboard_url}/api/jobs/"
    job = {"entrypoint": "echo plexa-auth-ok"}

    refused = requests.post(jobs_url, json=job, timeout=10)
    assert refused.status_code == 401, refused.text
    wrong = requests.post(jobs_url, json=job, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403, wrong.text
    accepted = requests.post(
        jobs_url, json=job, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=10
    )
    assert accepted.status_code == 200, accepted.text
    job_id = accepted.json()["submission_id"]

    # plexa's commands: refused without a token (a user error: exit 2, saying why), fine with it
    no_token = plexa(
        "jobs", "--address", cluster.dashboard_url, cwd=Path.cwd(), env={"RAY_AUTH_TOKEN": ""}
    )
    assert no_token.returncode == 2, no_token.stdout + no_token.stderr
    assert "refused" in no_token.stdout and "token" in no_token.stdout

    deadline = time.monotonic() + 60
    while cluster.api(f"/api/jobs/{job_id}")["status"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, "the echo job did not finish"
        time.sleep(0.5)
    logs = plexa(
        "logs", job_id, "--address", cluster.dashboard_url, cwd=Path.cwd(), env=cluster.client_env()
    )
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "plexa-auth-ok" in logs.stdout


def test_submit_runs_a_pipeline_as_a_ray_job(cluster: RayCluster, workdir: Path) -> None:
    """`plexa submit` streams the job's logs, exits 0 on SUCCEEDED; `plexa jobs` lists it."""
    result = plexa(
        "submit",
        PIPELINE,
        *QUICK,
        "compute.runner=local",
        _store(workdir),
        "--address",
        cluster.dashboard_url,
        "--token",
        cluster.token,
        cwd=workdir,
        env={"RAY_AUTH_TOKEN": ""},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "epoch   1/1" in result.stdout  # the job's own lines, streamed back
    assert "SUCCEEDED" in result.stdout
    job_id = next(w for w in result.stdout.split() if w.startswith("plexa-digits-mlp-"))
    assert len(_finished_runs(workdir)) == 1  # the job logged to the store it was given

    listed = plexa(
        "jobs", "--address", cluster.dashboard_url, cwd=workdir, env=cluster.client_env()
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(line for line in listed.stdout.splitlines() if job_id in line)
    assert "SUCCEEDED" in row and "plexa run pipeline.yaml" in row

    logs = plexa(
        "logs", job_id, "--address", cluster.dashboard_url, cwd=workdir, env=cluster.client_env()
    )
    assert logs.returncode == 0 and "epoch   1/1" in logs.stdout, logs.stdout + logs.stderr

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(
        cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"}
    )
    shipped = client.get_job_info(job_id).runtime_env
    assert len(shipped["py_modules"]) == 3  # plexa, plexa_models, plexa_data travel with it


def test_submit_exits_1_when_the_job_fails(cluster: RayCluster, workdir: Path) -> None:
    """A job that fails on the cluster (its run folder can't be made) makes `submit` exit 1;
    --env reaches the job."""
    result = plexa(
        "submit",
        PIPELINE,
        *QUICK,
        _store(workdir),
        "--env",
        "PLEXA_RUNS_DIR=/dev/null/runs",
        "--address",
        cluster.dashboard_url,
        cwd=workdir,
        env=cluster.client_env(),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    assert "/dev/null/runs" in result.stdout  # the job's traceback names the folder


def test_submit_with_a_bad_pipeline_or_address_fails_fast(workdir: Path) -> None:
    """Nothing is sent for an invalid pipeline; an unreachable API is a user error too (exit 2)."""
    invalid = plexa("submit", PIPELINE, "train.max_epochs=0", cwd=workdir)
    assert invalid.returncode == 2, invalid.stdout + invalid.stderr
    assert "train.max_epochs" in invalid.stdout

    unreachable = plexa("submit", PIPELINE, "--address", "http://127.0.0.1:9", cwd=workdir)
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "cannot reach" in unreachable.stdout


def test_ray_runner_places_one_worker_on_each_node(cluster: RayCluster, workdir: Path) -> None:
    """compute.runner=ray joining the cluster's GCS: two one-CPU workers on two one-CPU nodes,
    so Ray must put one on each; Ray's state API says where they ran."""
    before = {a["actor_id"] for a in cluster.actors("RayTrainWorker")}
    result = plexa(
        "run",
        PIPELINE,
        *QUICK,
        "compute.runner=ray",
        "compute.workers=2",
        "compute.cpus_per_worker=1",
        f"compute.address={cluster.gcs_address}",
        cwd=workdir,
        env=cluster.client_env(auth_mode=True),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test/acc" in result.stdout
    assert len(_finished_runs(workdir)) == 1

    workers = [a for a in cluster.actors("RayTrainWorker") if a["actor_id"] not in before]
    assert len(workers) == 2, workers
    assert sorted(w["node_id"] for w in workers) == sorted(cluster.node_ids)
