"""plexa serve: Open Inference Protocol v2 driven by tritonclient (a third-party client),
/predict, dynamic batching, readiness, metrics, request ids, auth, limits, targets, the CLI.

Everything runs for real: ONNX Runtime on exports made by plexa.export, uvicorn on a free
loopback port, an MLflow sqlite store for registered models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from plexa.serving import ServeOptions, TargetError, resolve_all
from plexa.serving.app import create_app
from plexa.serving.batching import Batcher
from plexa.serving.model import load
from tests.conftest import BIN
from tests.serving_support import ThreadServer, cached, digits_data, free_port, wait_ready


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached("digits", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached("generator", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def test_x() -> np.ndarray:
    return digits_data().test.x[:32]


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def _client(ready: TestClient) -> TestClient:
    for _ in range(200):
        if ready.get("/v2/health/ready").status_code == 200:
            return ready
        time.sleep(0.02)
    raise TimeoutError("app not ready")


# --------------------------------------------------------------------------- protocol


def test_tritonclient_speaks_to_several_models(digits: Path, generator: Path, test_x) -> None:
    with ThreadServer([str(digits), f"gen={generator}"]) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "plexa"
        assert client.is_model_ready("digits-cnn") and client.is_model_ready("gen")
        meta = client.get_model_metadata("digits-cnn")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"][0]["shape"] == [-1, 10]

        expected = _direct(digits, test_x[:5])
        for binary in (False, True):  # JSON tensors and the binary tensor extension
            tensor = triton.InferInput("input", list(test_x[:5].shape), "FP32")
            tensor.set_data_from_numpy(test_x[:5], binary_data=binary)
            wanted = triton.InferRequestedOutput("output", binary_data=binary)
            result = client.infer("digits-cnn", [tensor], outputs=[wanted], request_id="r-1")
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=0, atol=1e-6)
            assert result.get_response()["id"] == "r-1"

        z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        latent = triton.InferInput("input", [3, 4], "FP32")
        latent.set_data_from_numpy(z)
        images = client.infer("gen", [latent]).as_numpy("output")  # binary by default
        np.testing.assert_allclose(images, _direct(generator, z), atol=1e-6)
        assert images.shape == (3, 1, 8, 8)

        with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
            client.infer("nope", [tensor])
        assert caught.value.status() == "404"
        wrong = triton.InferInput("input", [1, 64], "FP32")
        wrong.set_data_from_numpy(test_x[:1].reshape(1, 64))
        with pytest.raises(InferenceServerException, match=r"takes \['batch', 1, 8, 8\]") as c:
            client.infer("digits-cnn", [wrong])
        assert c.value.status() == "400"
        client.close()


def test_predict_takes_raw_inputs_and_names_classes(digits: Path) -> None:
    data = digits_data()
    raw = data.test.x[:20] * 16.0  # pixel intensities 0..16, as the data came
    with TestClient(create_app(resolve_all([str(digits)]))) as app:
        response = _client(app).post("/predict", json={"inputs": raw.reshape(20, 8, 8).tolist()})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        logits = _direct(digits, data.test.x[:20])
        assert [p["label"] for p in predictions] == [str(i) for i in logits.argmax(1)]
        for p, row in zip(predictions, logits, strict=True):
            assert sorted(p["probabilities"]) == [str(i) for i in range(10)]
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-6
            expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            assert abs(p["probabilities"][p["label"]] - expected.max()) < 1e-5
        assert (logits.argmax(1) == data.test.y[:20]).mean() >= 0.8  # a trained model
        one = app.post("/predict", json={"model": "digits-cnn", "inputs": raw[0].ravel().tolist()})
        assert one.json()["predictions"][0]["label"] == predictions[0]["label"]


def test_sample_draws_from_a_generator(generator: Path, digits: Path) -> None:
    with TestClient(create_app(resolve_all([str(digits), f"gen={generator}"]))) as app:
        body = _client(app).post("/sample", json={"model": "gen", "n": 6, "seed": 3}).json()
        assert body["shape"] == [1, 8, 8] and len(body["samples"]) == 6
        assert body["value_range"] == [0.0, 1.0]
        z = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
        np.testing.assert_allclose(np.array(body["samples"]), _direct(generator, z), atol=1e-6)
        refused = app.post("/sample", json={"model": "digits-cnn"})
        assert refused.status_code == 400 and "not a generator" in refused.json()["error"]
        assert "several" in app.post("/predict", json={"inputs": [1]}).json()["error"]


def test_a_small_model_runs_on_one_onnx_runtime_thread(digits: Path, tmp_path: Path) -> None:
    """The digits CNN answers faster on the calling thread alone than by waking ONNX Runtime's
    pool for each call; a model whose calls take milliseconds keeps the pool, and a thread
    count the caller gives is kept as it is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from plexa.serving.model import SMALL_CALL_SECONDS

    def threads(model: object) -> int:
        return model.session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]

    assert threads(load(digits, "digits", str(digits))) == 1
    assert threads(load(digits, "digits", str(digits), threads=2)) == 2
    weights = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    graph = helper.make_graph(  # eight rows through it: 34M multiply-adds, milliseconds
        [helper.make_node("MatMul", ["input", "w"], ["output"])],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2048])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph), tmp_path / "wide.onnx")
    wide = load(tmp_path / "wide.onnx", "wide", "wide.onnx")
    started = time.perf_counter()
    wide.run({"input": np.ones((8, 2048), np.float32)})
    assert time.perf_counter() - started > SMALL_CALL_SECONDS
    assert threads(wide) == 0  # ONNX Runtime's default pool


# --------------------------------------------------------------------------- batching


def test_batcher_merges_concurrent_requests_with_identical_results(digits: Path, test_x) -> None:
    model = load(digits, "digits", str(digits))
    sizes: list[int] = []
    rows = [1, 3, 1, 2, 5, 1, 1, 4, 1, 1, 2, 1, 3, 1, 1, 1]  # 29 rows, 16 requests

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch=8, max_wait=0.05, on_batch=sizes.append)
        batcher.start()
        starts = np.cumsum([0, *rows])
        calls = [
            batcher.submit({"input": test_x[a:b]}, b - a)
            for a, b in zip(starts[:-1], starts[1:], strict=True)
        ]
        results = await asyncio.gather(*calls)
        await batcher.stop()
        return [r[0] for r in results]

    results = asyncio.run(scenario())
    assert sum(sizes) == sum(rows) and max(sizes) <= 8 and len(sizes) < len(rows)
    starts = np.cumsum([0, *rows])
    for out, a, b in zip(results, starts[:-1], starts[1:], strict=True):
        alone = model.run({"input": test_x[a:b]})[0]  # the same rows, unbatched
        np.testing.assert_allclose(out, alone, rtol=0, atol=1e-6)
        assert out.shape == (b - a, 10)


def test_a_short_model_call_runs_on_the_loop_and_a_long_one_in_a_thread(
    digits: Path, test_x
) -> None:
    """Once its calls (timed in a thread) show a model answers in far less than a thread
    hand-off, the batcher runs it on the event loop; a call slower than INLINE_SECONDS stays in
    a thread, so the loop goes on taking requests meanwhile. The two models are the digits CNN's
    answers given back at once and after a sleep: how fast the real CNN runs depends on the
    machine's load, and the decision under test is the batcher's (a few calls the machine holds
    up do not change it)."""
    import threading

    from plexa.serving.batching import INLINE_SECONDS

    model = load(digits, "digits", str(digits))
    answers: dict[int, list[np.ndarray]] = {}

    class Answers:  # the CNN's outputs for a batch of n rows, computed once
        inputs, outputs = model.inputs, model.outputs
        pause = 0.0

        def __init__(self) -> None:
            self.held: list[float] = []  # pauses for the next calls, then `pause`

        def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            rows = len(feeds["input"])
            if rows not in answers:
                answers[rows] = model.run(feeds)
            pause = self.held.pop() if self.held else self.pause
            if pause:
                time.sleep(pause)
            return answers[rows]

    class Slow(Answers):
        pause = INLINE_SECONDS * 20

    async def threads_used(served: Answers) -> set[bool]:
        on_loop: set[bool] = set()
        run = served.run

        def spy(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            on_loop.add(threading.current_thread() is threading.main_thread())
            return run(feeds)

        served.run = spy  # type: ignore[method-assign]
        batcher = Batcher(served, max_batch=8, max_wait=0.0)  # type: ignore[arg-type]
        batcher.start()
        for _ in range(40):  # the first ones in a thread, timed; the recent calls' median decides
            got = await batcher.submit({"input": test_x[:2]}, 2)
        np.testing.assert_array_equal(got[0], model.run({"input": test_x[:2]})[0])
        served.held.extend([INLINE_SECONDS * 20] * 3)  # calls the machine holds up: no change
        for _ in range(3):
            await batcher.submit({"input": test_x[:2]}, 2)
        on_loop.clear()
        for _ in range(5):
            await batcher.submit({"input": test_x[:2]}, 2)
        await batcher.stop()
        return on_loop

    assert asyncio.run(threads_used(Answers())) == {True}
    assert asyncio.run(threads_used(Slow())) == {False}


def test_server_batches_concurrent_http_requests(digits: Path, test_x) -> None:
    with ThreadServer([str(digits)], max_batch=16, max_wait_ms=40) as server:

        def all_in_flight() -> None:  # the server is receiving all 16, observed on its gauge
            gauge = 'plexa_in_flight{route="/v2/models/{name}/infer"}'
            deadline = time.monotonic() + 30
            while _sample(httpx.get(f"{server.url}/metrics").text, gauge, 0.0) < 16:
                assert time.monotonic() < deadline, "the 16 requests never were in flight"
                time.sleep(0.01)

        together = threading.Barrier(16, action=all_in_flight)

        def one(i: int) -> np.ndarray:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "data": test_x[i].ravel().tolist(),
                    }
                ]
            }
            payload = json.dumps(body).encode()

            def in_two_parts() -> Iterator[bytes]:
                # every request is being received at once, whatever the client threads' pace
                # (the batcher waits for requests in flight, not for ones not yet sent)
                yield payload[:10]
                together.wait(timeout=60)
                yield payload[10:]

            r = httpx.post(
                f"{server.url}/v2/models/digits-cnn/infer", content=in_two_parts(), timeout=30
            )
            assert r.status_code == 200, r.text
            return np.array(r.json()["outputs"][0]["data"], dtype=np.float32)

        with ThreadPoolExecutor(16) as pool:
            outputs = np.stack(list(pool.map(one, range(16))))
        np.testing.assert_allclose(outputs, _direct(digits, test_x[:16]), rtol=0, atol=1e-6)
        metrics = httpx.get(f"{server.url}/metrics").text
        count = _sample(metrics, 'plexa_batch_size_count{model="digits-cnn"}')
        total = _sample(metrics, 'plexa_batch_size_sum{model="digits-cnn"}')
        assert total == 16 and count < 16  # some requests shared an ONNX Runtime call


def _sample(metrics: str, name: str, absent: float | None = None) -> float:
    """One sample's value; `absent` where it is not exposed yet (a labelled child appears with
    its first observation), else a missing sample fails the test."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    if absent is None:
        raise AssertionError(f"no sample {name} in /metrics:\n{metrics}")
    return absent


# --------------------------------------------------------------------------- operations


def test_ready_only_after_load_and_warm_up(digits: Path) -> None:
    app = create_app(resolve_all([str(digits)]))
    plain = TestClient(app)  # no lifespan: nothing loaded yet
    assert plain.get("/v2/health/live").json() == {"live": True}
    assert plain.get("/v2/health/ready").status_code == 503
    assert plain.get("/v2/models/digits-cnn/ready").status_code == 503
    with TestClient(app) as client:
        _client(client)
        model = app.state.plexa.models["digits-cnn"]
        assert model.warmup_runs >= 3  # warmed up before readiness
        assert client.get("/v2/models/digits-cnn/ready").json()["ready"] is True


def test_metrics_and_request_ids(digits: Path, test_x, caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 8, 8],
                "datatype": "FP32",
                "data": test_x[0].ravel().tolist(),
            }
        ]
    }
    with TestClient(create_app(resolve_all([str(digits)]))) as client:
        _client(client)
        with caplog.at_level(logging.INFO, logger="plexa.serving"):
            ok = client.post(
                "/v2/models/digits-cnn/infer", json=body, headers={"X-Request-ID": "trace-42"}
            )
            bad = client.post("/v2/models/digits-cnn/infer", content=b"{oops")
        assert ok.headers["x-request-id"] == "trace-42" and len(bad.headers["x-request-id"]) == 16
        lines = [r.getMessage() for r in caplog.records]
        assert any("trace-42" in m and "/infer 200" in m for m in lines)
        assert any(bad.headers["x-request-id"] in m and " 400 " in m for m in lines)
        text = client.get("/metrics").text
        infer = 'route="/v2/models/{name}/infer"'
        assert _sample(text, f'plexa_requests_total{{{infer},status="200"}}') == 1
        assert _sample(text, f'plexa_errors_total{{{infer},status="400"}}') == 1
        assert _sample(text, f"plexa_request_seconds_count{{{infer}}}") == 2
        assert _sample(text, 'plexa_batch_size_count{model="digits-cnn"}') == 1


BAD_REQUESTS = [
    (b"{not json", "malformed JSON"),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", "data": [NaN]}]}',
        "NaN is not a JSON number",
    ),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "inputs: is missing"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}', "shape"),
    (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
        "has no input 'x'",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "INT64", "data": [1]}]}',
        "takes FP32, not 'INT64'",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", "data": [1]}]}',
        "1 values, but shape [1, 1, 8, 8] needs 64",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", '
        b'"data": ["a", "b"]}]}',
        "must hold only numbers",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", "data": 3}]}',
        "must be a list of numbers",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", '
        b'"data": [[1], [2, 3]]}]}',
        "unequal length",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", '
        b'"data": [' + b",".join([b"1e39"] * 64) + b"]}]}",
        "out of range for FP32",
    ),
    (
        b'{"inputs": [{"name": "input", "shape": [0,1,8,8], "datatype": "FP32", "data": []}]}',
        "at least one row",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_problem(digits: Path, body: bytes, message: str) -> None:
    with TestClient(create_app(resolve_all([str(digits)]))) as client:
        response = _client(client).post("/v2/models/digits-cnn/infer", content=body)
        assert response.status_code == 400
        assert message in response.json()["error"]


def test_limits_unknown_models_and_nan(digits: Path) -> None:
    app = create_app(resolve_all([str(digits)]), ServeOptions(max_body_bytes=2000))
    with TestClient(app) as client:
        _client(client)
        big = client.post("/predict", content=b"[" + b"1," * 2000 + b"1]")
        assert big.status_code == 413 and "2000 bytes" in big.json()["error"]
        missing = client.get("/v2/models/nope")
        assert missing.status_code == 404 and "unknown model 'nope'" in missing.json()["error"]
        nan = np.full((1, 1, 8, 8), np.nan, dtype=np.float32)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        refused = client.post(
            "/v2/models/digits-cnn/infer",
            content=header + nan.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert refused.status_code == 400 and "NaN" in refused.json()["error"]
        assert client.post("/predict", json={"inputs": [1, 2]}).status_code == 400
        assert client.get("/v2/health/ready").status_code == 200


def test_bearer_token(digits: Path) -> None:
    app = create_app(resolve_all([str(digits)]), ServeOptions(token="s3cret"))
    with TestClient(app) as client:
        _client(client)  # health checks stay open for probes
        assert client.get("/v2/models/digits-cnn").status_code == 401
        wrong = client.get("/v2/models/digits-cnn", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
        right = client.get("/v2/models/digits-cnn", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert client.post("/predict", json={}).status_code == 401
        assert client.get("/metrics").status_code == 401


# --------------------------------------------------------------------------- targets, CLI


def test_targets_registered_models_aliases_and_runs(workdir: Path, digits: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from plexa.export import ExportResult, log_onnx
    from tests.serving_support import digits_spec

    spec = digits_spec()
    spec.export.register_as = "digits-served"
    with mlflow.start_run(tags={"plexa.pipeline": "digits-cnn"}) as run:  # as plexa run tags
        log_onnx(ExportResult(digits, 0.0, 1e-4, 1), spec, digits_data().spec)
    MlflowClient().set_registered_model_alias("digits-served", "champion", "1")

    by_version, by_alias, by_run = resolve_all(
        ["models:/digits-served/1", "alias=models:/digits-served@champion", run.info.run_id]
    )
    assert by_version.name == "digits-served" and by_alias.name == "alias"
    assert by_run.name == "digits-cnn"  # the run's pipeline
    for t in (by_version, by_alias, by_run):
        assert t.path.name == "model.onnx" and t.path.read_bytes() == digits.read_bytes()

    with pytest.raises(TargetError) as caught:
        resolve_all(["nowhere.onnx", str(workdir), "models:/nothing/1", "0" * 32, "models:/bad"])
    message = str(caught.value)
    for expected in (
        "nowhere.onnx: no such file",
        f"{workdir}: not an .onnx file",
        "models:/nothing/1: cannot fetch",
        "no such MLflow run",
        "models:/NAME/VERSION",
    ):
        assert expected in message
    with pytest.raises(TargetError, match="already used"):
        resolve_all([f"a={digits}", f"a={digits}"])


def test_cli_binds_loopback_and_finishes_in_flight_requests(digits: Path, test_x) -> None:
    port = free_port()
    env = {**os.environ, "PLEXA_SERVE_TOKEN": "tok"}
    process = subprocess.Popen(
        [str(BIN / "plexa"), "serve", str(digits), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer tok"}
    lines: list[str] = []
    shutting_down = threading.Event()

    def read_output() -> None:  # the server's log, live: its shutdown is observed, not timed
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Shutting down" in line:
                shutting_down.set()

    reader = threading.Thread(target=read_output, daemon=True)
    try:
        wait_ready(url, process)
        reader.start()
        import psutil

        listening = {
            c.laddr.ip
            for c in psutil.Process(process.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
        assert httpx.get(f"{url}/v2/models", timeout=5).status_code == 401  # token from env
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 8, 8],
                    "datatype": "FP32",
                    "data": test_x[0].ravel().tolist(),
                }
            ]
        }

        def infer(_: int) -> int:
            payload = json.dumps(body).encode()

            def rest_after_sigterm() -> Iterator[bytes]:  # in flight when the signal lands
                yield payload[:10]
                assert shutting_down.wait(timeout=30), "the server never began shutting down"
                yield payload[10:]

            r = httpx.post(
                f"{url}/v2/models/digits-cnn/infer",
                content=rest_after_sigterm(),
                headers=auth,
                timeout=60,
            )
            return r.status_code

        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(infer, i) for i in range(4)]
            gauge = 'plexa_in_flight{route="/v2/models/{name}/infer"}'
            deadline = time.monotonic() + 30
            # until all four are being received (the gauge appears with the first of them)
            while _sample(httpx.get(f"{url}/metrics", headers=auth).text, gauge, 0.0) < 4:
                assert time.monotonic() < deadline, "the four requests never were in flight"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            codes = [f.result() for f in pending]
        assert codes == [200] * 4
        # uvicorn re-raises the signal once it has shut down gracefully
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "/infer 200" in output and "every request in flight was answered" in output


def test_cli_refuses_bad_targets_before_starting(workdir: Path) -> None:
    done = subprocess.run(
        [str(BIN / "plexa"), "serve", "missing.onnx", "x.txt"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    assert done.returncode == 2
    assert "missing.onnx: no such file" in done.stdout and "x.txt: not an .onnx" in done.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
