"""The BentoML contender of benchmarks/serving.py: `bentoml serve bento_service:Digits` with
PLEXA_BENCH_ONNX naming the file. One worker; adaptive batching on (`batchable=True`, at most
32 rows, plexa serve's --max-batch); BentoML picks the wait itself, within max_latency_ms."""

from __future__ import annotations

import os

import bentoml
import numpy as np
from contenders import session


@bentoml.service(workers=1)
class Digits:
    def __init__(self) -> None:
        self.session = session(os.environ["PLEXA_BENCH_ONNX"])

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=32)
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        x = inputs.astype(np.float32).reshape(-1, 1, 8, 8)
        return self.session.run(None, {"input": x})[0]
