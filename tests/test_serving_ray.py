"""`plexa serve --ray --replicas 2`: the same protocol from a Ray Serve deployment on embedded
Ray, both replicas answering (the x-plexa-replica header names the one that did)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.conftest import BIN
from tests.serving_support import cached, digits_data, free_port, wait_ready


@pytest.mark.slow
def test_two_ray_serve_replicas_speak_the_protocol(
    tmp_path_factory: pytest.TempPathFactory, workdir: Path
) -> None:
    digits = cached("digits", tmp_path_factory.getbasetemp())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    log = workdir / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                str(BIN / "plexa"),
                "serve",
                f"digits={digits}",
                "--ray",
                "--replicas",
                "2",
                "--port",
                str(port),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, 180, lambda: log.read_text()[-3000:])
        x = digits_data().test.x[:4]
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready() and client.is_model_ready("digits")
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("digits", [tensor]).as_numpy("output")
        session = ort.InferenceSession(str(digits), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(got, session.run(["output"], {"input": x})[0], atol=1e-6)
        client.close()

        raw = (x[0] * 16).ravel().tolist()

        def predict(_: int) -> str:
            r = httpx.post(f"{url}/predict", json={"inputs": raw}, timeout=60)
            assert r.status_code == 200, r.text
            return r.headers["x-plexa-replica"]

        with ThreadPoolExecutor(16) as pool:
            replicas = set(pool.map(predict, range(96)))
        assert len(replicas) == 2, replicas  # both replicas served requests
        bad = httpx.post(f"{url}/v2/models/digits/infer", content=b"{", timeout=30)
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    text = log.read_text()
    loaded = set(re.findall(r"pid=(\d+)\).*plexa.serving: loaded digits", text))
    assert len(loaded) == 2, text[-3000:]  # two replica processes loaded and warmed the model
