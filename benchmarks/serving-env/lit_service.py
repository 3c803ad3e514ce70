"""The LitServe contender's LitAPI (contenders.py serves it). A module of its own: LitServe
spawns its inference worker and pickles the API into it, so the class must be importable."""

from __future__ import annotations

import litserve as ls
import numpy as np
from contenders import session


class Digits(ls.LitAPI):
    """predict gets the batch LitServe's default `batch` stacks (numpy.stack) and returns one
    row per request, which the default `unbatch` splits."""

    def __init__(self, onnx: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.onnx = onnx

    def setup(self, device: str) -> None:
        self.session = session(self.onnx)

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["input"], np.float32).reshape(1, 8, 8)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]

    def encode_response(self, output: np.ndarray) -> dict:
        return {"output": output.tolist()}
