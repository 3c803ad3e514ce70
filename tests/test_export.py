"""ONNX export: metadata, parity through real ONNX Runtime, and logging to a real MLflow store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient

from plexa.config import PipelineSpec, validate
from plexa.export import ExportResult, ParityError, export_onnx, log_onnx
from plexa.plugins import DataSplits, architectures, datasets


def _spec(**export: Any) -> PipelineSpec:
    return validate(
        {
            "name": "t",
            "data": {"plugin": "tabular", "params": {"dataset": "iris"}},
            "model": {"plugin": "mlp", "params": {"hidden": [16]}},
            "export": export,
        }
    )


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return datasets.create("tabular").load(_spec().data_config(), seed=0)


def _net(spec: PipelineSpec, data: DataSplits) -> torch.nn.Module:
    """The mlp plugin's network after a few SGD steps, so the weights are not just the init."""
    torch.manual_seed(0)
    net = architectures.create("mlp").build(spec.model_config_(), data.spec)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def _torch_out(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def test_export_metadata_and_parity(tmp_path: Path, data: DataSplits) -> None:
    spec = _spec()
    net = _net(spec, data).train()
    result = export_onnx(net, spec, data, tmp_path / "export", run_id="abc123")

    assert net.training  # the caller's module is left as it was
    assert result.path == tmp_path / "export" / "model.onnx"
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.onnx"]  # one file
    assert result.samples == len(data.test) and 0 <= result.max_abs_diff <= 1e-4
    assert result.tolerance == 1e-4 and result.model_uri is None

    onnx.checker.check_model(str(result.path), full_check=True)
    model = onnx.load(str(result.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pipeline"] == "t" and meta["run_id"] == "abc123"
    assert meta["architecture"] == "mlp" and meta["data"] == "tabular"
    assert meta["task"] == "classification"
    assert json.loads(meta["class_names"]) == ["setosa", "versicolor", "virginica"]
    assert json.loads(meta["normalisation"]) == json.loads(json.dumps(data.spec.normalisation))
    assert json.loads(meta["target_normalisation"]) == {}
    assert json.loads(meta["input"]) == {"name": "input", "shape": ["batch", 4], "dtype": "float32"}
    assert json.loads(meta["output"]) == {
        "name": "output",
        "shape": ["batch", 3],
        "meaning": "logits over classes",
    }
    assert meta["plexa_version"] and "mlp" in json.loads(meta["plugin_versions"])
    assert "mlp" in model.doc_string and "\n" not in model.doc_string
    assert not any(n.metadata_props for n in model.graph.node)  # no stack traces shipped

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (dim,) = session.get_inputs()[0].shape[:1]
    assert isinstance(dim, str)  # a symbolic batch axis
    for batch in (1, 7):
        x = data.test.x[:batch]
        got = session.run(["output"], {"input": x})[0]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, _torch_out(net, x), atol=1e-4, rtol=0)


class _ExportOnlyShift(torch.nn.Module):
    """Adds 1.0 only while being traced for export: the export diverges from eager PyTorch."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + 1.0 if torch.compiler.is_exporting() else y


def test_parity_error_names_the_tolerance_key(tmp_path: Path, data: DataSplits) -> None:
    spec = _spec(parity_samples=8)
    with pytest.raises(ParityError, match=r"export\.parity_tolerance") as caught:
        export_onnx(_ExportOnlyShift(_net(spec, data)), spec, data, tmp_path, run_id="r1")
    err = caught.value
    assert abs(err.max_abs_diff - 1.0) < 1e-4 and err.tolerance == 1e-4
    assert "'t'" in str(err) and "r1" in str(err) and "0.0001" in str(err)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real MLflow sqlite store with its artifacts in tmp_path; global state restored after."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri exports it too
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # back to "unset"


def test_log_onnx_registers_a_loadable_model(tmp_path: Path, data: DataSplits, store: str) -> None:
    experiment = store

    spec = _spec(register_as="iris-mlp")
    net = _net(spec, data)
    result = export_onnx(net, spec, data, tmp_path / "export")
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_onnx(result, spec, data.spec)

    assert isinstance(logged, ExportResult) and logged.path == result.path
    assert logged.model_uri and logged.registered_name == "iris-mlp"
    assert logged.registered_version == "1"

    x = data.test.x[:7]
    out = mlflow.pyfunc.load_model(logged.model_uri).predict(x)
    np.testing.assert_allclose(out["output"], _torch_out(net, x), atol=1e-4, rtol=0)

    client = MlflowClient()
    assert client.get_registered_model("iris-mlp").name == "iris-mlp"
    versions = client.search_model_versions("name='iris-mlp'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    metric = client.get_run(run.info.run_id).data.metrics["export/parity_max_abs_diff"]
    assert metric == pytest.approx(result.max_abs_diff)
    # nothing landed in the repository (tests/conftest.py checks the whole tree after each test)
    artifacts = client.get_run(run.info.run_id).info.artifact_uri
    assert artifacts.startswith((tmp_path / "art").as_uri()), artifacts
