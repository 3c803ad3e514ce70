"""What a trained network costs to run: ONNX Runtime latency at batch 1 and parameter count.

Latency is a property of the architecture, not of the weights, so hardware-aware search can
measure it on any export of the network. One intra-op thread keeps the figure comparable
between trials that share a machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

WARMUP = 5


def onnx_latency_ms(path: Path, sample: np.ndarray, runs: int) -> float:
    """Median wall time of `runs` ONNX Runtime calls on one sample (batch 1), in ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: sample[:1]}
    for _ in range(WARMUP):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def parameter_count(net: Any) -> int:
    return sum(p.numel() for p in net.parameters())
