"""ONNX export of a trained network, a parity check against PyTorch, and MLflow logging.

The exported file is what a server runs, so it has to describe itself (metadata: task, input
and output shapes, class names, normalisation) and it has to compute what the PyTorch network
computes: `export_onnx` runs ONNX Runtime on held-out data at more than one batch size and
refuses (ParityError) a file that disagrees beyond `export.parity_tolerance`.

torch, onnx, onnxruntime and mlflow are imported inside the functions that need them, so the
CLI stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plexa.errors import RunFailed

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from torch import nn

    from plexa.config import PipelineSpec
    from plexa.plugins import DataSpec, DataSplits
    from plexa.quantize import Quantized
    from plexa.tracking import Tracker

TOLERANCE_KEY = "export.parity_tolerance"
MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MLFLOW_MODEL_NAME = "onnx-model"
INT8_MODEL_NAME = "onnx-model-int8"  # the int8 copy's logged model (export.quantize)
VARIANT_TAG = "plexa.variant"  # on each registered version: float or int8
PARITY_METRIC = "export/parity_max_abs_diff"

_MEANING = {
    "classification": "logits over classes",
    "language-model": "next-token logits over the vocabulary",
    "sequence": "forecast: the next values of the series (channel 0; channels 0..K-1 for K "
    "targets, horizon-major)",
    "generative": "generated samples",
}
_REGRESSION_MEANING = "regression targets (normalised)"
# loggers that print warnings irrelevant to a user during export (e.g. "torchvision is not
# installed. Skipping torchvision::nms")
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript")
_SINGLE_ROWS = 3  # rows also run one at a time, to prove the dynamic batch axis


class ExportError(RunFailed, RuntimeError):
    """The network could not be exported to a usable ONNX file."""


class ParityError(ExportError):
    """The ONNX file computes something else than the PyTorch network it came from."""

    def __init__(
        self, message: str, *, max_abs_diff: float, tolerance: float, path: Path | None = None
    ) -> None:
        super().__init__(message)
        self.max_abs_diff, self.tolerance, self.path = max_abs_diff, tolerance, path


@dataclass(frozen=True)
class ExportResult:
    """One export: the file, how closely it matches PyTorch, and where MLflow keeps it."""

    path: Path  # the .onnx file
    max_abs_diff: float  # parity vs PyTorch on held-out data
    tolerance: float
    samples: int  # how many held-out samples were compared
    model_uri: str | None = None  # set by log_onnx
    registered_name: str | None = None
    registered_version: str | None = None
    quantized: Quantized | None = None  # the int8 copy, with export.quantize


# --------------------------------------------------------------------------- export


def export_onnx(
    net: nn.Module,
    spec: PipelineSpec,
    data: DataSplits,
    out_dir: str | Path,
    run_id: str | None = None,
) -> ExportResult:
    """Export `net` to `out_dir/model.onnx` (one self-contained file) and check parity.

    The caller's module is left as it was: a CPU copy in eval mode is exported. Parity is the
    largest absolute difference between ONNX Runtime and PyTorch (eval, no grad) on the first
    `export.parity_samples` test inputs, run as one batch and row by row; above
    `export.parity_tolerance` it raises ParityError (the file is left in place to inspect).
    """
    import numpy as np
    import onnx
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    stale = path.with_name(path.name + ".data")  # external weights of an earlier export
    if stale.exists():
        stale.unlink()

    inputs = _parity_inputs(net, data, spec.export.parity_samples)
    x = next(iter(inputs.values()))
    module = _export_copy(net, x.dtype)
    # a batch of at least 2: torch.export specialises a dimension whose example size is 0 or 1
    examples = tuple(
        torch.from_numpy(v[:2] if len(v) >= 2 else np.repeat(v[:1], 2, axis=0))
        for v in inputs.values()
    )

    with _quiet():
        try:
            program = torch.onnx.export(
                module,
                examples,
                None,  # saved below, after the metadata is added, as one file
                dynamo=True,
                input_names=list(inputs),
                output_names=[OUTPUT_NAME],
                # named axis -> Dim.DYNAMIC, kept as "batch"
                dynamic_shapes=tuple({0: "batch"} for _ in inputs),
                opset_version=spec.export.opset,
                verbose=False,
                report=False,
            )
        except Exception as exc:
            raise ExportError(
                f"pipeline '{spec.name}': torch.onnx.export failed for architecture "
                f"'{spec.model.plugin}': {type(exc).__name__}: {exc}"
            ) from exc
    assert program is not None  # dynamo=True always returns the program

    with torch.no_grad():
        reference = module(*(torch.from_numpy(v) for v in inputs.values()))
    if not isinstance(reference, torch.Tensor):
        raise ExportError(
            f"pipeline '{spec.name}': the exported module must return one tensor, "
            f"not {type(reference).__name__}"
        )
    reference_np = reference.detach().cpu().numpy()

    model = program.model_proto
    _strip_debug_info(model)
    output_shape: list[int | str] = ["batch", *reference_np.shape[1:]]
    _describe(model, spec, data.spec, x, output_shape, run_id)
    _describe_generator(model, net, inputs)
    onnx.save_model(model, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    _check_batch_axis(path, spec.name)

    diff = _parity(path, inputs, reference_np)
    tolerance = spec.export.parity_tolerance
    if not diff <= tolerance:  # also catches NaN
        where = f"pipeline '{spec.name}'" + (f", run {run_id}" if run_id else "")
        raise ParityError(
            f"{where}: the ONNX export ({path}) does not match PyTorch: max abs diff "
            f"{diff:.3g} over {len(x)} held-out samples exceeds the tolerance {tolerance:g} "
            f"(YAML key `{TOLERANCE_KEY}`). Raise `{TOLERANCE_KEY}` if the difference is "
            "expected, otherwise the network behaves differently while being exported.",
            max_abs_diff=diff,
            tolerance=tolerance,
            path=path,
        )
    return ExportResult(path=path, max_abs_diff=diff, tolerance=tolerance, samples=len(x))


def _held_out(data: DataSplits, samples: int) -> np.ndarray:
    """Test inputs the network never trained on, in the dtype the DataSpec promises."""
    import numpy as np

    from plexa.streaming import head

    x = np.ascontiguousarray(head(data.test, samples), dtype=data.spec.input_dtype)
    if len(x) == 0:
        raise ExportError("the test split is empty: no held-out data for the parity check")
    return x


def _export_copy(net: nn.Module, input_dtype: np.dtype) -> nn.Module:
    """A CPU, eval-mode copy with float weights in the input's float type (float32 for ids)."""
    import copy

    import numpy as np
    import torch

    module = copy.deepcopy(net).cpu().eval()
    float_dtype = input_dtype if np.issubdtype(input_dtype, np.floating) else np.dtype("float32")
    return module.to(dtype=getattr(torch, float_dtype.name))


@contextlib.contextmanager
def _quiet(names: tuple[str, ...] = _NOISY_LOGGERS, *, warnings_too: bool = True) -> Iterator[None]:
    """Silence library warnings and log lines, so the CLI stays readable; errors still raise."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if warnings_too:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop per-node exporter metadata: stack traces with this machine's paths, FX dumps."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            for attr in node.attribute:  # If / Loop / Scan bodies
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]


def _describe(
    model: onnx.ModelProto,
    spec: PipelineSpec,
    data_spec: DataSpec,
    x: np.ndarray,
    output_shape: list[int | str],
    run_id: str | None,
) -> None:
    """Write what a server needs to use the file on its own into `metadata_props`."""
    import plexa

    meaning = _MEANING.get(data_spec.task, _REGRESSION_MEANING)
    props: dict[str, str] = {
        "plexa_version": plexa.__version__,
        "pipeline": spec.name,
        "architecture": spec.model.plugin,
        "architecture_params": json.dumps(spec.model.params, sort_keys=True),
        "data": spec.data.plugin,
        "task": data_spec.task,
        "input": json.dumps(
            {"name": INPUT_NAME, "shape": ["batch", *x.shape[1:]], "dtype": x.dtype.name}
        ),
        "output": json.dumps({"name": OUTPUT_NAME, "shape": output_shape, "meaning": meaning}),
        "normalisation": json.dumps(data_spec.normalisation),
        "target_normalisation": json.dumps(data_spec.target_normalisation),
        "parity_tolerance": repr(spec.export.parity_tolerance),
    }
    props["plugin_versions"] = json.dumps(_plugin_versions(spec), sort_keys=True)
    for key, names in (
        ("class_names", data_spec.class_names),
        ("feature_names", data_spec.feature_names),
        ("target_names", data_spec.target_names),
    ):
        if names is not None:
            props[key] = json.dumps(list(names))
    if run_id:
        props["run_id"] = run_id

    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"plexa pipeline '{spec.name}': {spec.model.plugin} network on {spec.data.plugin} data "
        f"({data_spec.task}); input '{INPUT_NAME}' {x.dtype.name}[batch, "
        f"{', '.join(map(str, x.shape[1:]))}], output '{OUTPUT_NAME}': {meaning}."
    )


def _plugin_versions(spec: PipelineSpec) -> dict[str, str]:
    """`{plugin: "distribution==version"}` for the two plugins of the pipeline."""
    from plexa.plugins import architectures, datasets

    out = {}
    for registry, name in ((architectures, spec.model.plugin), (datasets, spec.data.plugin)):
        dist, version = registry.source(name)
        out[name] = f"{dist}=={version}"
    return out


def _check_batch_axis(path: Path, pipeline: str) -> None:
    """Fail clearly when the exporter fixed the batch size (the model reshaped by a constant)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims and not dims[0].dim_param:
        raise ExportError(
            f"pipeline '{pipeline}': the exported graph has a fixed batch size "
            f"({dims[0].dim_value}); the network must not depend on the batch size"
        )


def _parity(path: Path, x: np.ndarray | dict[str, np.ndarray], reference: np.ndarray) -> float:
    """Max abs diff of ONNX Runtime vs PyTorch: the whole chunk, then single rows."""
    import onnxruntime as ort

    feeds = x if isinstance(x, dict) else {INPUT_NAME: x}
    rows = len(next(iter(feeds.values())))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = _max_abs_diff(session.run([OUTPUT_NAME], feeds)[0], reference)
    for i in range(min(_SINGLE_ROWS, rows)):
        row = session.run([OUTPUT_NAME], {k: v[i : i + 1] for k, v in feeds.items()})[0]
        worst = max(worst, _max_abs_diff(row, reference[i : i + 1]))
    return worst


def _parity_inputs(net: nn.Module, data: DataSplits, samples: int) -> dict[str, np.ndarray]:
    """Held-out data, or what a generator says it takes (`onnx_inputs`: a latent; noisy
    images and timesteps), in input order."""
    declared = getattr(net, "onnx_inputs", None)
    if callable(declared):
        return dict(declared(samples))
    return {INPUT_NAME: _held_out(data, samples)}


def _describe_generator(
    model: onnx.ModelProto, net: nn.Module, inputs: dict[str, np.ndarray]
) -> None:
    """A generator's own metadata (`generative`: kind, latent and image shapes, schedule), and
    every input when there is more than one; `plexa generate` reads them."""
    extra = getattr(net, "onnx_metadata", None)
    props = {"generative": json.dumps(extra())} if callable(extra) else {}
    if len(inputs) > 1:
        props["inputs"] = json.dumps(
            [
                {"name": k, "shape": ["batch", *v.shape[1:]], "dtype": v.dtype.name}
                for k, v in inputs.items()
            ]
        )
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; equal values (NaN where both are NaN, same infinities) count as 0."""
    import numpy as np

    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    diff = np.where(same, 0.0, np.abs(a64 - b64))
    return float(np.nan_to_num(diff, nan=np.inf).max())


# --------------------------------------------------------------------------- mlflow


def export_and_log(
    module: nn.Module, spec: PipelineSpec, data: DataSplits, folder: Path, tracker: Tracker
) -> ExportResult:
    """Export a trained model with the parity check, quantize it (`export.quantize`), and log
    (and register) both to the tracker's run.

    The int8 copy is judged before anything is logged, so a run whose int8 export loses too
    much registers neither (its comparison is logged as metrics, to read in MLflow). It is
    registered first, so the float model stays the registered model's latest version."""
    from plexa.quantize import check_drop, quantize

    exported = export_onnx(module, spec, data, folder, tracker.run_id)
    quantized = None
    if spec.export.quantize is not None:
        made = quantize(exported.path, spec, data)
        tracker.log_metrics(made.metrics())
        check_drop(made, spec.name)
        quantized = tracker.guarded(
            "the int8 ONNX model", lambda: log_quantized(made, spec, data.spec, tracker)
        )
    logged = tracker.guarded("the ONNX model", lambda: log_onnx(exported, spec, data.spec, tracker))
    return replace(logged, quantized=quantized)


def log_onnx(
    result: ExportResult, spec: PipelineSpec, data_spec: DataSpec, tracker: Tracker | None = None
) -> ExportResult:
    """Log the export to the tracker's run (else MLflow's active run) as a pyfunc-loadable
    ONNX model.

    Registers it under `export.register_as` when set, logs the parity diff as
    `export/parity_max_abs_diff`, and returns the result with the model URI and registry
    name/version filled in.
    """
    import mlflow

    run_id = _run_id(tracker)
    if tracker is not None:
        tracker.log_metrics({PARITY_METRIC: result.max_abs_diff})
    else:
        mlflow.MlflowClient().log_metric(run_id, PARITY_METRIC, result.max_abs_diff)
    info = _log_model(
        result.path,
        MLFLOW_MODEL_NAME,
        spec,
        data_spec,
        run_id,
        {
            "parity_max_abs_diff": result.max_abs_diff,
            "parity_tolerance": result.tolerance,
            "parity_samples": result.samples,
        },
    )
    version = _tag_version(spec, info, "float")
    return replace(
        result,
        model_uri=info.model_uri,
        registered_name=spec.export.register_as if version is not None else None,
        registered_version=version,
    )


def log_quantized(
    quantized: Quantized, spec: PipelineSpec, data_spec: DataSpec, tracker: Tracker | None = None
) -> Quantized:
    """Log the int8 copy beside the float model (`onnx-model-int8`) and register it as its
    own version of `export.register_as`, which the alias `int8` then names."""
    import mlflow

    from plexa.quantize import VARIANT

    info = _log_model(
        quantized.path, INT8_MODEL_NAME, spec, data_spec, _run_id(tracker), quantized.metadata()
    )
    version = _tag_version(spec, info, VARIANT)
    if version is not None and spec.export.register_as:
        mlflow.MlflowClient().set_registered_model_alias(spec.export.register_as, VARIANT, version)
    return replace(quantized, model_uri=info.model_uri, registered_version=version)


def _run_id(tracker: Tracker | None) -> str:
    import mlflow

    if tracker is not None:
        return tracker.active_run_id
    if (active := mlflow.active_run()) is not None:
        return active.info.run_id
    raise RuntimeError("logging an ONNX model needs a tracker or an active MLflow run")


def _tag_version(spec: PipelineSpec, info: Any, variant: str) -> str | None:
    """Say on the registered version (if any) which variant it holds."""
    import mlflow

    version = info.registered_model_version
    if version is None or not spec.export.register_as:
        return None
    mlflow.MlflowClient().set_model_version_tag(
        spec.export.register_as, str(version), VARIANT_TAG, variant
    )
    return str(version)


def _log_model(
    path: Path,
    name: str,
    spec: PipelineSpec,
    data_spec: DataSpec,
    run_id: str,
    metadata: dict[str, Any],
) -> Any:
    """One ONNX file as an MLflow model of the run, with its signature and an input example,
    registered under `export.register_as` when set; returns MLflow's ModelInfo."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}

    def tensor(value: onnx.ValueInfoProto) -> TensorSpec:
        t = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        return TensorSpec(np.dtype(dtype), shape, value.name)

    inputs = [tensor(v) for v in model.graph.input]
    signature = ModelSignature(
        inputs=Schema(list(inputs)), outputs=Schema([tensor(v) for v in model.graph.output])
    )
    # zeros in normalised space are the training means: a typical, valid sample
    example: np.ndarray | dict[str, np.ndarray]
    example = np.zeros((1, *data_spec.input_shape), dtype=inputs[0].type)
    if data_spec.task == "generative":  # a generator's inputs are latents (or noise and steps)
        example = {t.name: np.zeros((1, *t.shape[1:]), dtype=t.type) for t in inputs if t.name}
        if len(example) == 1:
            example = next(iter(example.values()))

    # the model lists CUDA then CPU providers (used where the loader has them); mlflow warns on
    # a CPU-only build when it validates the input example, which is noise at logging time
    with _quiet(("mlflow.onnx",), warnings_too=False):
        return mlflow.onnx.log_model(
            model,
            name=name,
            run_id=run_id,  # Model.log's, passed through: the run by id, whatever thread
            signature=signature,
            input_example=example,
            registered_model_name=spec.export.register_as,
            save_as_external_data=False,
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),  # skips a slow inference
            metadata={
                "pipeline": spec.name,
                "plexa_version": props.get("plexa_version"),
                **metadata,
            },
        )
