"""The other servers of benchmarks/serving.py, each run as its own process from .venv-serving:

    .venv-serving/bin/python benchmarks/serving-env/contenders.py SERVER MODEL.onnx PORT [GRPC_PORT]

SERVER is litserve, ray or kserve (BentoML is served by its own CLI from bento_service.py).
Each serves the same ONNX file with one worker/replica on 127.0.0.1, through each framework's
documented public API, with its own server-side batching where it has one (max batch 32, max
wait 2 ms: plexa serve's defaults). ONNX Runtime gets plexa serve's settings (session()).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

MAX_BATCH = 32
MAX_WAIT_S = 0.002


SMALL_CALL_SECONDS = 250e-6  # plexa.serving.model's


def session(path: str, threads: int = 0) -> Any:
    """An ONNX Runtime session set up as plexa.serving.model.load does: CPU, no spinning
    between calls, intra-op threads at ONNX Runtime's default (plexa serve's --threads 0)
    unless eight rows take under SMALL_CALL_SECONDS on them, then one. (This environment has no
    plexa to import, so the rule is restated here.)"""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    opened = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    if threads:
        return opened
    first = opened.get_inputs()[0]
    feeds = {first.name: np.zeros((8, *first.shape[1:]), np.float32)}  # the digits CNN's input
    opened.run(None, feeds)
    best = float("inf")
    for _ in range(10):  # the quickest of up to ten calls, as plexa.serving.model times them
        started = time.perf_counter()
        opened.run(None, feeds)
        best = min(best, time.perf_counter() - started)
        if best < SMALL_CALL_SECONDS or best > 10 * SMALL_CALL_SECONDS:
            break
    return session(path, 1) if best < SMALL_CALL_SECONDS else opened


def litserve(onnx: str, port: int) -> None:
    """LitServe: one inference worker on the CPU, one API server process (its defaults)."""
    import litserve as ls
    from lit_service import Digits

    api = Digits(onnx, max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_S)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(
        host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False,
        log_level="warning",
    )  # fmt: skip


def ray(onnx: str, port: int) -> None:
    """Ray Serve: one replica whose HTTP handler awaits a `@serve.batch` method. Its own local
    Ray cluster (address="local": never someone else's); Serve's HTTP proxy forwards to it."""
    import numpy as np
    import ray as ray_core
    from ray import serve
    from starlette.requests import Request

    # max_ongoing_requests defaults to 5: above it the proxy queues and no batch could exceed 5
    @serve.deployment(
        num_replicas=1, max_ongoing_requests=4 * MAX_BATCH, ray_actor_options={"num_cpus": 0}
    )
    class Digits:
        def __init__(self, path: str) -> None:
            self.session = session(path)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT_S)
        async def predict(self, rows: list[list[float]]) -> list[list[float]]:
            x = np.asarray(rows, np.float32).reshape(-1, 1, 8, 8)
            return self.session.run(None, {"input": x})[0].tolist()

        async def __call__(self, request: Request) -> dict:
            if request.method == "GET":  # the benchmark's readiness probe: the app is deployed
                return {"ready": True}
            return {"output": await self.predict((await request.json())["input"])}

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)  # so the cluster this process started goes with it
    ray_core.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Digits.bind(onnx), name="digits", route_prefix="/")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray_core.shutdown()


def kserve(onnx: str, port: int, grpc_port: int) -> None:
    """KServe's Python model server: a kserve.Model answering Open Inference Protocol v2 over
    REST, and over gRPC (grpc_predict_v2) on grpc_port. Its Python server has no server-side
    batching (KServe batches in a separate agent sidecar on Kubernetes), so none here."""
    import kserve as ks
    from kserve import InferOutput, InferRequest, InferResponse

    class Digits(ks.Model):
        def __init__(self) -> None:
            super().__init__("digits")
            self.load()

        def load(self) -> bool:
            self.session = session(onnx)
            self.ready = True
            return True

        async def predict(
            self,
            payload: InferRequest,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> InferResponse:
            y = self.session.run(None, {"input": payload.inputs[0].as_numpy()})[0]
            out = InferOutput("output", list(y.shape), "FP32", y)
            return InferResponse(payload.id or "", self.name, [out], from_grpc=payload.from_grpc)

    ks.ModelServer(http_port=port, grpc_port=grpc_port, workers=1).start([Digits()])


if __name__ == "__main__":
    name, model, http, *grpc = sys.argv[1:]
    del sys.argv[1:]  # kserve parses sys.argv for its own flags when imported
    if name == "kserve":
        kserve(model, int(http), int(grpc[0]))
    else:
        {"litserve": litserve, "ray": ray}[name](model, int(http))
