"""The `plexa` command: fast help, light import, exit codes, and each subcommand for real."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from .conftest import BIN, PIPELINES, plexa

HEAVY = ("torch", "lightning", "ray", "mlflow", "flwr", "onnxruntime")


def test_import_plexa_loads_no_heavy_package() -> None:
    code = (
        "import sys, plexa; plexa.Architecture; plexa.PluginConfig; plexa.architecture;"
        f"print(sorted(set({HEAVY!r}) & {{m.split('.')[0] for m in sys.modules}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_answers_in_under_half_a_second() -> None:
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([str(BIN / "plexa"), "--help"], capture_output=True, text=True)
        timings.append(time.perf_counter() - start)
        assert out.returncode == 0
        assert "run" in out.stdout and "validate" in out.stdout
    assert min(timings) < 0.5, timings


def test_validate_prints_the_resolved_pipeline(workdir: Path) -> None:
    out = plexa("validate", str(PIPELINES / "digits-cnn.yaml"), "train.max_epochs=3", cwd=workdir)
    assert out.returncode == 0, out.stdout
    assert "max_epochs: 3" in out.stdout and "kernel_size: 3" in out.stdout


def test_an_invalid_pipeline_exits_2_and_starts_nothing(workdir: Path) -> None:
    bad = ["model.params.channels=[0]", "train.batch_size=-1", "data.params.bogus=1"]
    empty_store = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    for command in ("validate", "run"):
        out = plexa(command, str(PIPELINES / "digits-cnn.yaml"), *bad, cwd=workdir)
        assert out.returncode == 2, out.stdout + out.stderr
        for path in ("model.params.channels", "train.batch_size", "data.params.bogus"):
            assert path in out.stdout
    # nothing written: the (empty) store untouched, no run folder
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == empty_store


def test_malformed_yaml_exits_2_with_line_and_column(workdir: Path) -> None:
    pipeline = workdir / "bad.yaml"
    pipeline.write_text("name: x\ndata: [unclosed\n")
    out = plexa("run", str(pipeline), cwd=workdir)
    assert out.returncode == 2
    assert "line 3, column 1" in out.stdout


def test_resume_of_an_unknown_run_exits_2(workdir: Path) -> None:
    out = plexa("run", str(PIPELINES / "wine-mlp.yaml"), "--resume", "0123abcd", cwd=workdir)
    assert out.returncode == 2
    assert "no MLflow run '0123abcd'" in out.stdout


@pytest.mark.slow
def test_run_then_runs_then_export(workdir: Path) -> None:
    run = plexa("run", str(PIPELINES / "wine-mlp.yaml"), "train.max_epochs=1", cwd=workdir)
    assert run.returncode == 0, run.stdout + run.stderr
    run_id = next(
        line.split("│")[2].strip() for line in run.stdout.splitlines() if "MLflow run" in line
    )
    assert "models:/wine-mlp/1" in run.stdout

    runs = plexa("runs", cwd=workdir, env={"COLUMNS": "250"})
    assert runs.returncode == 0
    row = next(line for line in runs.stdout.splitlines() if run_id in line)
    assert "wine-mlp" in row and "FINISHED" in row and "test/acc" in row

    exported = plexa("export", run_id, cwd=workdir)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "models:/wine-mlp/2" in exported.stdout and "parity max abs diff" in exported.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_mlflow_dashboard_on_loopback(workdir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "plexa"), "ui", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    body = page.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.5)
        assert page.status == 200 and "mlflow" in body.lower()
        # without MLflow's GenAI job runner: its Huey consumers are seven processes importing
        # MLflow, for nothing a training dashboard shows
        tree = [" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(recursive=True)]
        assert tree and not [c for c in tree if "huey" in c or "_job_runner" in c], tree
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_from_a_run_reruns_its_logged_pipeline_with_the_same_metrics(workdir: Path) -> None:
    """A run logs what reruns it (its resolved pipeline, plugin versions, the installed
    packages); `plexa run --from RUN_ID` reruns it, and on CPU the metrics are the same."""
    import mlflow

    from plexa import orchestrator, tracking
    from plexa.config import load_pipeline

    spec = load_pipeline(PIPELINES / "wine-mlp.yaml", ["train.max_epochs=2", "export.onnx=false"])
    first = orchestrator.run(spec)
    client = mlflow.MlflowClient()
    packages = client.download_artifacts(first.run_id, tracking.PACKAGES_ARTIFACT, str(workdir))
    assert "torch==" in Path(packages).read_text() and "plexa==" in Path(packages).read_text()
    tags = client.get_run(first.run_id).data.tags
    assert tags["plexa.architecture.distribution"] == "plexa" and tags["plexa.data.version"]

    done = plexa("run", "--from", first.run_id, cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rerun: plexa run --from" in done.stdout
    runs = client.search_runs([client.get_run(first.run_id).info.experiment_id])
    (again,) = [r for r in runs if r.info.run_id != first.run_id]
    assert again.data.params == client.get_run(first.run_id).data.params
    for key, value in first.metrics.items():
        assert again.data.metrics[key] == value, key
