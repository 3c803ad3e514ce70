"""An int8 copy of a checked ONNX export, made with ONNX Runtime's quantization tools, and the
gate that keeps it only when its test metric stays within `export.quantize.max_metric_drop`.

Both files are judged the same way, on ONNX Runtime and the test split: the task's own test
metric (accuracy for classification, else the loss) is computed for the float export and for
the int8 one, so the difference is quantization's alone, not PyTorch's vs ONNX Runtime's.
Latency is the median of repeated single-threaded runs on one fixed test batch, the two files
timed alternately so a busy machine slows both alike.

numpy, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import RunFailed, UserError

if TYPE_CHECKING:
    import numpy as np

    from plexa.config import PipelineSpec
    from plexa.plugins import DataSplits, Split, Stream

DROP_KEY = "export.quantize.max_metric_drop"
QUANTIZED_FILE = "model.int8.onnx"
VARIANT = "int8"
LATENCY_RUNS = 50  # timed calls of each file; their median is the latency
_LATENCY_BATCH = 64  # test rows in the fixed batch both files are timed on
_EVAL_BATCH = 1024
_CALIBRATION_BATCH = 32


class QuantizeError(RunFailed, RuntimeError):
    """ONNX Runtime could not quantize the export, or the int8 file does not run."""


class MetricDropError(UserError):
    """The int8 export loses more of the test metric than `export.quantize.max_metric_drop`."""

    def __init__(self, message: str, *, float_value: float, int8_value: float, drop: float):
        super().__init__(message)
        self.float_value, self.int8_value, self.drop = float_value, int8_value, drop


@dataclass(frozen=True)
class Metric:
    """How a task's test metric is computed from outputs, and which way is better."""

    name: str  # as the run logs it, without the split: acc, loss
    higher_is_better: bool
    # per batch: (sum of the metric's terms, how many terms)
    terms: Callable[[np.ndarray, np.ndarray], tuple[float, int]]


def _correct(out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    return float((out.argmax(1) == y).sum()), len(y)


def _squared_error(out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    err = out.astype("float64") - y.reshape(out.shape)
    return float((err**2).sum()), err.size


def _cross_entropy(out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    import numpy as np

    logits = out.reshape(-1, out.shape[-1]).astype(np.float64)
    ids = y.reshape(-1)
    top = logits.max(1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return float((log_z - logits[np.arange(len(ids)), ids]).sum()), len(ids)


# the metric each task's module monitors (plexa.tasks), computed as that module computes it
METRICS: dict[str, Metric] = {
    "classification": Metric("acc", True, _correct),
    "regression": Metric("loss", False, _squared_error),
    "sequence": Metric("loss", False, _squared_error),
    "language-model": Metric("loss", False, _cross_entropy),
}


@dataclass(frozen=True)
class Quantized:
    """An int8 file beside its float export, and how the two compare."""

    path: Path
    mode: str
    metric: str  # the test metric compared: test/acc, test/loss
    higher_is_better: bool
    float_value: float  # that metric for the float export on ONNX Runtime
    int8_value: float
    drop: float  # how much worse int8 is (negative: better), in the metric's units
    max_drop: float
    float_bytes: int
    int8_bytes: int
    float_latency_ms: float
    int8_latency_ms: float
    latency_batch: int
    calibration_samples: int | None  # static only
    model_uri: str | None = None  # set once logged
    registered_version: str | None = None

    @property
    def latency_ratio(self) -> float:
        """int8 latency over float latency: below 1 is faster."""
        return self.int8_latency_ms / self.float_latency_ms

    def metrics(self) -> dict[str, float]:
        """The run metrics: sizes, latencies, both metric values and their difference."""
        short = self.metric.replace("/", "_")
        return {
            "export/float/size_bytes": float(self.float_bytes),
            "export/int8/size_bytes": float(self.int8_bytes),
            "export/float/latency_ms": self.float_latency_ms,
            "export/int8/latency_ms": self.int8_latency_ms,
            "export/int8/latency_ratio": self.latency_ratio,
            f"export/float/{short}": self.float_value,
            f"export/int8/{short}": self.int8_value,
            "export/int8/metric_delta": self.int8_value - self.float_value,
        }

    def metadata(self) -> dict[str, object]:
        """What the logged MLflow model says about its quantization."""
        return {
            "variant": VARIANT,
            "quantization_mode": self.mode,
            "calibration_samples": self.calibration_samples,
            "metric": self.metric,
            "float_metric": self.float_value,
            "int8_metric": self.int8_value,
            "max_metric_drop": self.max_drop,
        }


def quantize(float_path: Path, spec: PipelineSpec, data: DataSplits) -> Quantized:
    """Quantize `float_path` into `QUANTIZED_FILE` beside it and compare the two on the test
    split. Raises QuantizeError when ONNX Runtime cannot quantize or run it; the metric gate
    is `check_drop`'s, so the comparison can be logged before a run fails on it."""
    settings = spec.export.quantize
    assert settings is not None
    task = data.spec.task
    if task not in METRICS:
        raise QuantizeError(
            f"pipeline '{spec.name}': export.quantize needs a test metric; the {task} task "
            "has none plexa computes on ONNX Runtime"
        )
    out = float_path.with_name(QUANTIZED_FILE)
    calibration = None
    if settings.mode == "static":
        calibration = _calibration_inputs(data.train, settings.calibration_samples, spec)
    where = f"pipeline '{spec.name}', architecture '{spec.model.plugin}'"
    feeds = None
    if calibration is not None:
        name, step = _input_name(float_path), _CALIBRATION_BATCH
        feeds = [{name: calibration[i : i + step]} for i in range(0, len(calibration), step)]
    try:
        with _quiet():
            quantize_file(float_path, out, feeds)
        _keep_metadata(
            float_path, out, settings.mode, None if calibration is None else len(calibration)
        )
        float_session, int8_session = _session(float_path), _session(out)
    except Exception as exc:  # onnxruntime raises its own types (Fail, NotImplemented, ...)
        raise QuantizeError(
            f"{where}: ONNX Runtime could not quantize the export ({settings.mode} mode): "
            f"{type(exc).__name__}: {exc}. Try the other export.quantize.mode, or remove "
            "export.quantize."
        ) from exc
    if not _quantized_ops(out):
        raise QuantizeError(
            f"{where}: ONNX Runtime's {settings.mode} quantization found no operator of this "
            "network to quantize. Try the other export.quantize.mode, or remove "
            "export.quantize."
        )
    float_bytes, int8_bytes = float_path.stat().st_size, out.stat().st_size
    metric = METRICS[task]
    float_value = evaluate(float_session, data, metric)
    try:
        int8_value = evaluate(int8_session, data, metric)
    except Exception as exc:
        raise QuantizeError(f"{where}: the int8 export does not run: {exc}") from exc
    drop = float_value - int8_value if metric.higher_is_better else int8_value - float_value
    batch = _latency_batch(data)
    float_ms, int8_ms = latencies(float_path, out, batch)
    return Quantized(
        path=out,
        mode=settings.mode,
        metric=f"test/{metric.name}",
        higher_is_better=metric.higher_is_better,
        float_value=float_value,
        int8_value=int8_value,
        drop=drop,
        max_drop=settings.max_metric_drop,
        float_bytes=float_bytes,
        int8_bytes=int8_bytes,
        float_latency_ms=float_ms,
        int8_latency_ms=int8_ms,
        latency_batch=len(batch),
        calibration_samples=len(calibration) if calibration is not None else None,
    )


def check_drop(quantized: Quantized, pipeline: str) -> None:
    """Refuse an int8 export that loses more than `export.quantize.max_metric_drop`."""
    q = quantized
    if q.drop <= q.max_drop:  # NaN fails too
        return
    worse = "lower" if q.higher_is_better else "higher"
    raise MetricDropError(
        f"pipeline '{pipeline}': the int8 export ({q.mode} quantization) is worse than the "
        f"float one on {q.metric}: {q.int8_value:.6g} vs {q.float_value:.6g} ({worse} by "
        f"{q.drop:.6g}), more than `{DROP_KEY}` = {q.max_drop:g}. Raise `{DROP_KEY}` to "
        "accept it, try the other `export.quantize.mode` (or more "
        "`export.quantize.calibration_samples`), or remove `export.quantize`.",
        float_value=q.float_value,
        int8_value=q.int8_value,
        drop=q.drop,
    )


# --------------------------------------------------------------------------- quantizing


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer's advice and progress go to the root logger and warnings: not the CLI's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_file(source: Path, out: Path, feeds: list[dict[str, np.ndarray]] | None) -> None:
    """ONNX Runtime's pre-processing (shape inference, graph optimisation), then its dynamic
    quantizer (no `feeds`) or its static (QDQ) one calibrated on `feeds` (one batch of every
    input, by name, each), int8 weights in both."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="plexa-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # symbolic shape inference gives up on some graphs: quantize as is
            prepared = source
        if feeds is None:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
            return
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


class _Calibration:
    """Calibration feeds for `quantize_static`, which asks for one at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _calibration_inputs(split: Split | Stream, samples: int, spec: PipelineSpec) -> np.ndarray:
    """`samples` training inputs from the data the run loaded: drawn at random (seeded by
    `train.seed`) from an in-memory split, the first ones of a streamed split."""
    import numpy as np

    from plexa.plugins import Split
    from plexa.streaming import head

    if isinstance(split, Split):
        rng = np.random.default_rng(spec.train.seed)
        picked = np.sort(rng.choice(len(split), min(samples, len(split)), replace=False))
        x = np.asarray(split.x[picked])
    else:
        x = head(split, samples)
    if len(x) == 0:
        raise QuantizeError(f"pipeline '{spec.name}': the training split is empty: no samples")
    return np.ascontiguousarray(x)


def _keep_metadata(source: Path, out: Path, mode: str, calibrated: int | None) -> None:
    """The float file's self-description (task, shapes, names, normalisation) on the int8 file,
    which a server needs as much, plus how it was quantized."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    quantized = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    props["quantization"] = json.dumps(
        {"variant": VARIANT, "mode": mode, "calibration_samples": calibrated}
    )
    del quantized.metadata_props[:]
    for key, value in props.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    quantized.doc_string = f"{model.doc_string} int8 ({mode} quantization)."
    onnx.save_model(quantized, str(out), save_as_external_data=False)


def _quantized_ops(path: Path) -> int:
    """How many nodes compute in int8 (or convert to it): none means nothing was quantized."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(
        "Quantize" in n.op_type or n.op_type.endswith("Integer") or n.op_type.startswith("QLinear")
        for n in graph.node
    )


# --------------------------------------------------------------------------- measuring


def _session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_name(path: Path) -> str:
    import onnx

    return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)


def evaluate(session: Any, data: DataSplits, metric: Metric) -> float:
    """The metric over the whole test split, as the task module sums it: terms over count."""
    import numpy as np

    from plexa.streaming import iter_batches

    name = session.get_inputs()[0].name
    total, count = 0.0, 0
    for x, y in iter_batches(data.test, _EVAL_BATCH):
        feed = np.ascontiguousarray(np.asarray(x), dtype=data.spec.input_dtype)
        out = session.run(None, {name: feed})[0]
        terms, n = metric.terms(out, np.asarray(y))
        total, count = total + terms, count + n
    if count == 0:
        raise QuantizeError("the test split is empty: nothing to compare the int8 export on")
    return total / count


def _latency_batch(data: DataSplits) -> np.ndarray:
    import numpy as np

    from plexa.streaming import head

    return np.ascontiguousarray(head(data.test, _LATENCY_BATCH), dtype=data.spec.input_dtype)


def latencies(
    first: Path, second: Path, batch: np.ndarray | dict[str, np.ndarray], runs: int = LATENCY_RUNS
) -> tuple[float, float]:
    """Median milliseconds per call of each file on `batch` (the first input, or a feed of
    every input by name), timed in alternation after a few untimed calls; one thread each, so
    the figure is the kernels', not the thread pool's."""
    import statistics

    sessions = [_session(first, threads=1), _session(second, threads=1)]
    feeds = [
        batch if isinstance(batch, dict) else {s.get_inputs()[0].name: batch} for s in sessions
    ]
    times: list[list[float]] = [[], []]
    for i in range(runs + 3):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds[k])
            if i >= 3:
                times[k].append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])
