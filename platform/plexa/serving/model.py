"""One served ONNX export: its ONNX Runtime session, what its metadata says, and warm-up.

The export describes itself (plexa.export writes task, input/output shape and dtype, class
names and normalisation into `metadata_props`), so the server needs nothing but the file.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

# ONNX element types as numpy names -> Open Inference Protocol datatypes
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
_ORT_TYPES = {f"tensor({'double' if k == 'float64' else k})": k for k in DATATYPES}
_ORT_TYPES["tensor(float)"] = "float32"
_WARMUP_BATCHES = (1, 2, 8)
# a model whose call on the largest warm-up batch takes less than this runs on one ONNX Runtime
# thread: waking the intra-op pool's threads for each of its calls costs more than they save
# (the digits CNN answers a row in 12 µs on one thread, 18 µs on two here)
SMALL_CALL_SECONDS = 250e-6


class ModelError(UserError, ValueError):
    """The file cannot be served: not ONNX, unreadable, or a shape plexa cannot serve."""


@dataclass(frozen=True)
class TensorInfo:
    """An input or output as the protocol describes it: name, numpy dtype, shape (-1 = any)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    # cached: each request asks (frozen dataclasses keep no cache otherwise)
    @functools.cached_property
    def datatype(self) -> str:
        return DATATYPES.get(self.dtype, self.dtype.upper())

    @functools.cached_property
    def numpy_dtype(self) -> np.dtype:
        import numpy as np

        return np.dtype(self.dtype)

    @functools.cached_property
    def wire_dtype(self) -> np.dtype:
        """The dtype of its values in a request's bytes: little-endian."""
        return self.numpy_dtype.newbyteorder("<")

    @functools.cached_property
    def fixed_tail(self) -> list[int] | None:
        """The sizes after the batch axis when none is free, for a quick shape check."""
        return None if -1 in self.shape[1:] else list(self.shape[1:])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ServedModel:
    """An ONNX Runtime session plus the export's metadata; `run` is safe from many threads."""

    name: str
    path: Path
    source: str  # what the user asked for: a file, models:/..., a run id
    session: ort.InferenceSession = field(repr=False)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    warmup_runs: int = 0

    @functools.cached_property
    def inputs_by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.inputs}

    @functools.cached_property
    def outputs_by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.outputs}

    @functools.cached_property
    def output_names(self) -> list[str]:
        """In the model's order, as `run` returns them (not to be changed)."""
        return [t.name for t in self.outputs]

    # ---- what the metadata says

    @property
    def task(self) -> str:
        return self.metadata.get("task", "unknown")

    @property
    def class_names(self) -> list[str] | None:
        names = self._json("class_names")
        if names is None and self.task == "classification" and self.outputs[0].shape[-1] > 0:
            names = [str(i) for i in range(self.outputs[0].shape[-1])]
        return names

    @property
    def normalisation(self) -> dict[str, Any]:
        return self._json("normalisation") or {}

    @property
    def target_normalisation(self) -> dict[str, Any]:
        return self._json("target_normalisation") or {}

    @property
    def generator(self) -> dict[str, Any]:
        """What plexa.export writes for a generator (`generative`: kind, latent_shape,
        image_shape, value_range); empty for other models."""
        info = self._json("generative")
        return info if isinstance(info, dict) else {}

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """A one-input generator's latent per sample (a diffusion denoiser has two inputs)."""
        if self.task != "generative" or len(self.inputs) != 1:
            return None
        latent = self.generator.get("latent_shape")
        if isinstance(latent, list) and all(isinstance(d, int) for d in latent):
            return tuple(latent)
        return self.inputs[0].shape[1:]

    @property
    def value_range(self) -> tuple[float, float] | None:
        """The range a generator's samples are in (for display), when the export says it."""
        low_high = self.generator.get("value_range")
        if isinstance(low_high, list) and len(low_high) == 2:
            return float(low_high[0]), float(low_high[1])
        return None

    def _json(self, key: str) -> Any:
        try:
            return json.loads(self.metadata[key])
        except (KeyError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        """The v2 model metadata, plus plexa's own fields under `parameters`."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [t.describe() for t in self.inputs],
            "outputs": [t.describe() for t in self.outputs],
            "parameters": {
                "task": self.task,
                "class_names": self.class_names,
                "normalisation": self.normalisation,
                "latent_shape": list(self.latent_shape) if self.latent_shape else None,
                "image_side": image_side(
                    (self.outputs if self.task == "generative" else self.inputs)[0].shape[1:]
                ),
                "pipeline": self.metadata.get("pipeline"),
                "source": self.source,
            },
        }

    # ---- running

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs for one batch; ONNX Runtime releases the GIL while it computes."""
        return self.session.run(self.output_names, feeds)

    def warm_up(self) -> float:
        """Run a few batches of zeros so the first request does not pay for allocation."""
        started = time.perf_counter()
        for batch in _WARMUP_BATCHES:
            self.run(_zeros(self.inputs, batch))
            self.warmup_runs += 1
        return time.perf_counter() - started

    # ---- raw inputs and readable outputs (/predict)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """`(raw - mean) / std` as the data plugin did at training time."""
        import numpy as np

        norm = self.normalisation
        mean = np.asarray(norm.get("mean", 0.0), dtype=np.float64)
        std = np.asarray(norm.get("std", 1.0), dtype=np.float64)
        return ((raw - mean) / std).astype(self.inputs[0].dtype)

    def readable(self, output: np.ndarray) -> list[dict[str, Any]]:
        """Per row: label and probabilities (classifier), values in the targets' own units
        (regression, forecasts), else raw."""
        import numpy as np

        if self.task == "classification":
            logits = output.astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            names = self.class_names or [str(i) for i in range(probs.shape[1])]
            return [
                {
                    "label": names[int(row.argmax())],
                    "index": int(row.argmax()),
                    "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
                }
                for row in probs
            ]
        if self.task in ("regression", "sequence"):
            norm = self.target_normalisation
            values = output * np.asarray(norm.get("std", 1.0)) + np.asarray(norm.get("mean", 0.0))
            names = self._json("target_names")
            return [
                {"values": dict(zip(names, map(float, row), strict=False))}
                if names
                else {"values": [float(v) for v in row]}
                for row in values.reshape(len(values), -1)
            ]
        return [{"output": row.tolist()} for row in output]


def load(path: Path, name: str, source: str, threads: int = 0) -> ServedModel:
    """Open `path` in ONNX Runtime (CPU) and read plexa's metadata; raises ModelError.
    `threads` 0: ONNX Runtime's default pool, or one thread for a model whose calls take less
    than SMALL_CALL_SECONDS."""
    session = _session(path, source, threads)
    inputs = tuple(_info(t) for t in session.get_inputs())
    outputs = tuple(_info(t) for t in session.get_outputs())
    for t in inputs:
        if not t.shape or t.shape[0] != -1:
            raise ModelError(f"{source}: input '{t.name}' has no batch axis: shape {t.shape}")
    if not threads and _call_seconds(session, inputs, max(_WARMUP_BATCHES)) < SMALL_CALL_SECONDS:
        session = _session(path, source, 1)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return ServedModel(name, path, source, session, inputs, outputs, metadata)


def _session(path: Path, source: str, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # no busy-waiting between calls: the event loop parsing the next requests needs the core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for missing, corrupt or invalid files
        raise ModelError(f"{source}: ONNX Runtime cannot load {path}: {exc}") from exc


def _call_seconds(
    session: ort.InferenceSession, inputs: tuple[TensorInfo, ...], rows: int
) -> float:
    """The quickest of up to ten calls on `rows` rows of zeros (the first one allocates): one
    under SMALL_CALL_SECONDS is enough, and one far over it (a large model) ends the count; a
    loaded machine holds up some calls, not all."""
    feeds = _zeros(inputs, rows)
    best = math.inf
    try:
        session.run(None, feeds)
        for _ in range(10):
            started = time.perf_counter()
            session.run(None, feeds)
            best = min(best, time.perf_counter() - started)
            if best < SMALL_CALL_SECONDS or best > 10 * SMALL_CALL_SECONDS:
                break
    except Exception:  # a model zeros do not suit: leave the choice to ONNX Runtime
        return math.inf
    return best


def _zeros(inputs: tuple[TensorInfo, ...], rows: int) -> dict[str, np.ndarray]:
    import numpy as np

    return {
        t.name: np.zeros((rows, *(max(d, 1) for d in t.shape[1:])), dtype=t.dtype) for t in inputs
    }


def _info(arg: Any) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"tensor '{arg.name}' has a type plexa cannot serve: {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorInfo(arg.name, dtype, shape)


def image_side(shape: tuple[int, ...]) -> int | None:
    """Side of a square single-channel image for a per-sample shape (1,H,H), (H,H) or (H*H,)."""
    dims = [d for d in shape if d != 1]
    if len(dims) == 2 and dims[0] == dims[1] and dims[0] > 0:
        return dims[0]
    if len(dims) == 1 and dims[0] > 0 and math.isqrt(dims[0]) ** 2 == dims[0]:
        return math.isqrt(dims[0])
    return None
