"""export.quantize: real runs quantized by ONNX Runtime, logged to a real MLflow store, the
metric gate through the `plexa` command's own error handler, and `plexa serve` answering with
the int8 variant."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlflow import MlflowClient

from plexa import orchestrator
from plexa.config import ConfigError, load_pipeline, validate
from plexa.export import INT8_MODEL_NAME, MLFLOW_MODEL_NAME, VARIANT_TAG
from plexa.quantize import DROP_KEY, QUANTIZED_FILE
from plexa.runners import RunResult
from tests.conftest import BIN, PIPELINES, _empty_store
from tests.serving_support import free_port, wait_ready

# the shipped digits CNN, trained briefly: a real conv net, seconds on a busy CPU
FAST = [
    "train.max_epochs=1",
    "train.limit_batches=6",
    "compute.accelerator=cpu",
    "compute.devices=1",
    "tracking.system_metrics=false",
    "export.parity_samples=64",
]
REGISTERED = "digits-cnn"  # the pipeline's export.register_as


def _store(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`folder` as a new user's working folder: its own sqlite store and runs folder."""
    import mlflow

    monkeypatch.chdir(folder)
    shutil.copyfile(_empty_store(), folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("PLEXA_RUNS_DIR", str(folder / "plexa-runs"))
    monkeypatch.delenv("PLEXA_RUN_DIR", raising=False)


def _run(mode: str, *more: str) -> RunResult:
    quantize = [f"export.quantize.mode={mode}", "export.quantize.max_metric_drop=0.2"]
    return orchestrator.run(load_pipeline(PIPELINES / "digits-cnn.yaml", [*FAST, *quantize, *more]))


@pytest.fixture(scope="module")
def static_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunResult]]:
    """One static-quantized digits CNN run in its own folder and store (read by two tests)."""
    folder = tmp_path_factory.mktemp("static")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _store(folder, monkeypatch)
        yield folder, _run("static", "export.quantize.calibration_samples=64")


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _store(tmp_path, monkeypatch)
    return tmp_path


def _check_logged(result: RunResult, mode: str) -> None:
    """What a run with export.quantize leaves: the file, its metrics, both logged models and
    both registered versions, the float one still the latest."""
    export = result.export
    assert export is not None and export.quantized is not None
    q = export.quantized
    assert q.path == export.path.with_name(QUANTIZED_FILE) and q.path.is_file()
    assert q.mode == mode and q.int8_bytes == q.path.stat().st_size
    assert q.int8_bytes < 0.5 * q.float_bytes == 0.5 * export.path.stat().st_size  # ~3.5x

    model = onnx.load(str(q.path))
    ops = {n.op_type for n in model.graph.node}
    assert ("QuantizeLinear" if mode == "static" else "DynamicQuantizeLinear") in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == "classification" and json.loads(meta["class_names"])[0] == "0"
    assert json.loads(meta["quantization"])["mode"] == mode

    # the float export on ONNX Runtime scores what the run's test step scored
    assert q.metric == "test/acc"
    assert abs(q.float_value - result.metrics["test/acc"]) <= 1.5 / 270
    assert abs(q.float_value - q.int8_value) == pytest.approx(abs(q.drop))

    client = MlflowClient()
    metrics = client.get_run(str(result.run_id)).data.metrics
    assert metrics["export/int8/size_bytes"] == q.int8_bytes
    assert metrics["export/float/size_bytes"] == q.float_bytes
    assert metrics["export/int8/latency_ms"] > 0 and metrics["export/float/latency_ms"] > 0
    assert metrics["export/int8/latency_ratio"] == pytest.approx(q.latency_ratio)
    assert metrics["export/int8/metric_delta"] == pytest.approx(q.int8_value - q.float_value)
    assert metrics["export/int8/test_acc"] == pytest.approx(q.int8_value)

    logged = client.search_logged_models(
        experiment_ids=[client.get_run(str(result.run_id)).info.experiment_id]
    )
    assert sorted(m.name for m in logged) == [MLFLOW_MODEL_NAME, INT8_MODEL_NAME]

    int8 = client.get_model_version_by_alias(REGISTERED, "int8")
    assert str(int8.version) == q.registered_version and int8.tags[VARIANT_TAG] == "int8"
    assert int8.run_id == result.run_id
    float_version = client.get_model_version(REGISTERED, str(export.registered_version))
    assert float_version.tags[VARIANT_TAG] == "float" and float_version.version != int8.version
    latest = client.search_model_versions(
        f"name = '{REGISTERED}'", order_by=["version_number DESC"]
    )
    assert latest[0].version == float_version.version  # `models:/NAME/latest` stays float


def test_static_quantization_logs_and_registers_an_int8_copy(
    static_run: tuple[Path, RunResult],
) -> None:
    _, result = static_run
    _check_logged(result, "static")
    assert result.export and result.export.quantized
    assert result.export.quantized.calibration_samples == 64


def test_dynamic_quantization_logs_and_registers_an_int8_copy(own_store: Path) -> None:
    result = _run("dynamic")
    _check_logged(result, "dynamic")
    assert result.export and result.export.quantized
    assert result.export.quantized.calibration_samples is None


def test_a_metric_drop_beyond_the_tolerance_fails_the_run(own_store: Path) -> None:
    """A regression net calibrated on one sample: its activation ranges clip every other
    input, so the int8 loss rises far above the float loss and a tolerance of 0 refuses it."""
    from typer.testing import CliRunner

    from plexa.cli import app

    args = [
        "run",
        str(PIPELINES / "diabetes-regression.yaml"),
        "train.max_epochs=1",
        "compute.accelerator=cpu",
        "tracking.system_metrics=false",
        "export.quantize.mode=static",
        "export.quantize.calibration_samples=1",
        "export.quantize.max_metric_drop=0",
    ]
    done = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    output = " ".join(done.output.split())  # rich wraps long lines
    assert done.exit_code == 2, done.output
    assert "Traceback" not in output
    assert f"`{DROP_KEY}` = 0" in output and "test/loss" in output

    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    metrics = run.data.metrics
    float_loss, int8_loss = metrics["export/float/test_loss"], metrics["export/int8/test_loss"]
    assert int8_loss > float_loss  # a real rise in loss, the numbers the message quotes
    assert f"{int8_loss:.6g} vs {float_loss:.6g}" in output
    assert f"higher by {int8_loss - float_loss:.6g}" in output
    assert client.search_registered_models() == []  # neither variant registered


def test_serve_answers_with_the_int8_variant(
    static_run: tuple[Path, RunResult], tmp_path: Path
) -> None:
    folder, result = static_run
    assert result.export and result.export.quantized
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    targets = [
        "digits-int8=models:/digits-cnn@int8",
        f"run-int8=runs:/{result.run_id}/onnx-model-int8",
    ]
    process = subprocess.Popen(
        [str(BIN / "plexa"), "serve", *targets, "--port", str(port), "--no-batching"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        x = np.zeros((2, 1, 8, 8), dtype=np.float32)
        body = {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        local = ort.InferenceSession(str(result.export.quantized.path))
        expected = local.run(None, {"input": x})[0]
        for name in ("digits-int8", "run-int8"):
            meta = httpx.get(f"{url}/v2/models/{name}", timeout=10).json()
            assert meta["name"] == name
            answer = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            out = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(out.reshape(expected.shape), expected, atol=1e-5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_quantize_settings_are_checked_with_their_paths() -> None:
    raw = {
        "name": "t",
        "data": {"plugin": "digits"},
        "model": {"plugin": "cnn"},
        "export": {"quantize": {"mode": "int4", "calibration_samples": 0, "max_metric_drop": -1}},
    }
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    paths = [path for path, _ in caught.value.problems]
    assert paths == [
        "export.quantize.mode",
        "export.quantize.calibration_samples",
        "export.quantize.max_metric_drop",
    ]
    generative = {
        "name": "g",
        "data": {"plugin": "digits", "params": {"task": "generative"}},
        "model": {"plugin": "gan"},
        "export": {"quantize": {"mode": "dynamic"}},
    }
    with pytest.raises(ConfigError, match=r"export\.quantize: the generative task"):
        validate(generative)
    spec = validate({**raw, "export": {"quantize": {"mode": "static"}}})
    assert spec.export.quantize is not None and spec.export.quantize.max_metric_drop == 0.01


def test_the_gate_scores_the_metric_each_task_module_monitors() -> None:
    from plexa.quantize import METRICS
    from plexa.tasks import TASK_MODULES

    assert set(METRICS) == set(TASK_MODULES)
    for task, metric in METRICS.items():
        name, mode = TASK_MODULES[task].monitor
        assert (name, mode) == (f"val/{metric.name}", "max" if metric.higher_is_better else "min")
