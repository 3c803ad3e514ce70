"""Property test: over a thousand malformed requests, never a 5xx, and the server stays ready.

Runs the real app (ONNX Runtime, batching, middleware) in-process through Starlette's test
client, so the thousand requests take seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexa.serving import ServeOptions, resolve_all
from plexa.serving.app import create_app
from tests.serving_support import cached

EXAMPLES = 1500  # some header texts cannot be sent at all (skipped); >= 1,000 reach the server
VALID = {
    "id": "x",
    "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
}
PATHS = [
    "/v2/models/digits-cnn/infer",
    "/v2/models/digits-cnn/versions/1/infer",
    "/v2/models/gen/infer",
    "/predict",
    "/sample",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=24,
)
field_values = (
    json_values
    | st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "fp32", "", "input", "output"])
    | st.lists(st.integers(min_value=-3, max_value=70), max_size=6)  # shapes
    | st.lists(st.floats(allow_nan=False) | st.integers(), max_size=70)  # data
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with one or more fields replaced, removed or added."""
    request: dict[str, Any] = json.loads(json.dumps(VALID))
    tensor = request["inputs"][0]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(["top", "tensor"]))
        target = request if where == "top" else tensor
        key = draw(
            st.sampled_from(["inputs", "outputs", "id", "parameters", "model", "n", "seed"])
            if where == "top"
            else st.sampled_from(["name", "shape", "datatype", "data", "parameters"])
        )
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(field_values)
    text = json.dumps(request)
    if draw(st.booleans()):  # JSON that Python accepts but the protocol must not: NaN
        text = text.replace(
            "0.5", draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])), 1
        )
    return text.encode()


bodies = st.one_of(
    mutated(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    mutated().flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.getbasetemp()
    targets = resolve_all([str(cached("digits", root)), f"gen={cached('generator', root)}"])
    app = create_app(targets, ServeOptions(max_body_bytes=4096, max_wait_ms=0.5))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.02)
        yield test_client


def test_malformed_requests_never_5xx_and_the_server_stays_ready(client: TestClient) -> None:
    """The storm and the check after it in one test: no test depends on another's state."""
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        path=st.sampled_from(PATHS)
        | st.text(min_size=1, max_size=12).map(lambda t: f"/v2/models/{quote(t, safe='')}/infer"),
        body=bodies,
        header=st.none() | st.text(max_size=6) | st.integers(-5, 300).map(str),
    )
    def storm(path: str, body: bytes, header: str | None) -> None:
        headers = {"Inference-Header-Content-Length": header} if header is not None else {}
        try:
            response = client.post(path, content=body, headers=headers)
        except UnicodeEncodeError:  # a header text httpx itself cannot send
            return
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path, body[:200], response.text)
        if response.status_code >= 400:
            assert response.json()["error"]  # a reason, always

    storm()
    assert sum(seen.values()) >= 1000, seen
    assert set(seen) - {200} and all(code < 500 for code in seen), seen
    assert client.get("/v2/health/ready").status_code == 200
    ok = client.post("/v2/models/digits-cnn/infer", json=VALID)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 10]
