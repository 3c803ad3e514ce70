"""Open Inference Protocol v2 (KServe / Triton REST): parse and check requests, build responses.

Every check raises `BadRequest` with a status and a message naming the field that is wrong, so
no malformed request reaches ONNX Runtime. Both encodings are understood: tensors as JSON
`data`, and Triton's binary tensor extension (`Inference-Header-Content-Length` header,
`binary_data_size` per input), which `tritonclient.http` uses by default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from plexa.serving.model import DATATYPES, ServedModel, TensorInfo

HEADER_LENGTH = "inference-header-content-length"
MAX_ROWS = 4096  # rows in one request; the body limit bounds bytes, this bounds work


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status to answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class InferRequest:
    """A checked request: one array per model input, all with the same number of rows."""

    id: str | None
    feeds: dict[str, np.ndarray]
    rows: int
    outputs: list[tuple[str, bool]]  # (output name, as binary)


def _reject_constant(token: str) -> Any:
    raise BadRequest(f"malformed JSON: {token} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN/Infinity tokens); malformed text is a 400 naming line and column.

    orjson parses what it can (several times faster than the standard library); what it
    refuses goes to the standard library, which accepts a little more (integers past 64 bits,
    UTF-16 text) and names the place of a real error.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BadRequest(f"malformed JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary tensors that follow it (binary tensor extension)."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length is not a number: {header_length!r}"
        ) from None
    if not 0 <= n <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)"
        )
    return body[:n], body[n:]


def parse_infer(body: bytes, header_length: str | None, model: ServedModel) -> InferRequest:
    """Check a v2 infer request against the model's inputs and outputs."""
    head, binary = split_binary(body, header_length)
    request = parse_json(head)
    if not isinstance(request, dict):
        raise BadRequest(f"the request must be a JSON object, not {_kind(request)}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"id: must be a string, not {_kind(request_id)}")
    params = _parameters(request.get("parameters"), "parameters")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output: must be true or false")

    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        what = "is missing" if raw_inputs is None else "must be a non-empty list"
        if raw_inputs is not None and not isinstance(raw_inputs, list):
            what += f", not {_kind(raw_inputs)}"
        raise BadRequest(f"inputs: {what}")
    feeds, rows = check_inputs(_json_tensors(raw_inputs, binary), model)
    return InferRequest(request_id, feeds, rows, _outputs(request, model, binary_default))


@dataclass(slots=True)
class Tensor:
    """One input as a transport delivered it, before any check against the model.

    Its contents are numbers (`values`, flat or nested) or little-endian bytes (`raw`).
    `at` names the input, `field` where its contents are and `size_field` what sets their
    length in bytes, each in the transport's own terms, for messages. `problem` is the
    transport's own objection to the contents, raised only once the name, datatype and shape
    have passed, so every transport reports the first problem in the same order.
    """

    at: str
    name: str
    datatype: Any
    shape: Any
    field: str
    values: Any = None
    raw: bytes | None = None
    size_field: str = ""
    problem: str | None = None


def check_inputs(
    tensors: Iterable[Tensor], model: ServedModel
) -> tuple[dict[str, np.ndarray], int]:
    """The inputs as arrays and their number of rows: every check both transports (REST and
    gRPC) share, so they refuse the same requests with the same words."""
    expected = model.inputs_by_name
    feeds: dict[str, np.ndarray] = {}
    for tensor in tensors:
        at, name = tensor.at, tensor.name
        if name not in expected:
            raise BadRequest(
                f"{at}.name: model '{model.name}' has no input '{name}' "
                f"(inputs: {', '.join(expected)})"
            )
        if name in feeds:
            raise BadRequest(f"{at}.name: input '{name}' is given twice")
        info = expected[name]
        datatype = tensor.datatype
        if not isinstance(datatype, str):
            raise BadRequest(f"{at}.datatype: missing or not a string")
        if datatype != info.datatype:
            raise BadRequest(
                f"{at}.datatype: input '{info.name}' takes {info.datatype}, not {datatype!r}"
            )
        shape = _shape(tensor.shape, at, info)
        if tensor.problem is not None:
            raise BadRequest(tensor.problem)
        if tensor.raw is not None:
            feeds[name] = _from_bytes(tensor, info, shape)
        else:
            feeds[name] = _from_json(tensor.values, tensor.field, info, shape, math.prod(shape))
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise BadRequest(f"inputs: missing input(s) {', '.join(missing)} of model '{model.name}'")
    rows = {len(a) for a in feeds.values()}
    if len(rows) > 1:
        raise BadRequest(f"inputs: all inputs need the same batch size, got {sorted(rows)}")
    return feeds, rows.pop()


def _json_tensors(items: list[Any], binary: bytes) -> Iterator[Tensor]:
    """The inputs of a JSON request, each with its slice of the binary part when it has one;
    lazily, so a problem is found in the order the inputs come."""
    offset = 0
    for i, item in enumerate(items):
        at = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{at}: must be an object, not {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"{at}.name: missing or not a string")
        tensor = Tensor(at, name, item.get("datatype"), item.get("shape"), f"{at}.data")
        try:
            size = _parameters(item.get("parameters"), f"{at}.parameters").get("binary_data_size")
            if size is None:
                if "data" not in item:
                    raise BadRequest(f"{at}.data: missing (and no binary_data_size parameter)")
                tensor.values = item["data"]
            else:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise BadRequest(f"{at}.parameters.binary_data_size: must be a whole number")
                if "data" in item:
                    raise BadRequest(f"{at}: has both data and binary_data_size")
                if offset + size > len(binary):
                    raise BadRequest(
                        f"{at}: the binary data ends before this tensor's {size} bytes"
                    )
                tensor.raw = binary[offset : offset + size]
                tensor.size_field = f"{at}.parameters.binary_data_size"
                offset += size
        except BadRequest as exc:
            tensor.problem = str(exc)
            yield tensor
            return
        yield tensor
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the last tensor")


def _from_bytes(tensor: Tensor, info: TensorInfo, shape: list[int]) -> np.ndarray:
    assert tensor.raw is not None
    array = raw_array(tensor.raw, info, shape)
    if array is None:
        needs = math.prod(shape) * info.wire_dtype.itemsize
        raise BadRequest(
            f"{tensor.size_field}: {len(tensor.raw)} bytes, but shape {shape} of "
            f"{info.datatype} needs {needs}"
        )
    if not all_finite(array):
        raise BadRequest(_not_finite(tensor.field, info))
    return array


def raw_array(data: bytes, info: TensorInfo, shape: Sequence[int]) -> np.ndarray | None:
    """Little-endian bytes as an array of the input's dtype and `shape` (a copy, in native
    order); None when their length does not make that shape."""
    if len(data) != math.prod(shape) * info.wire_dtype.itemsize:
        return None
    return np.frombuffer(data, info.wire_dtype).astype(info.numpy_dtype).reshape(shape)


def all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity (which no input may hold); true for a non-float array."""
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def _not_finite(field: str, info: TensorInfo) -> str:
    return f"{field}: input '{info.name}' contains NaN or infinity"


def _shape(shape: Any, where: str, info: TensorInfo) -> list[int]:
    # `type(d) is int`: JSON gives plain ints, and true/false (bools) are not sizes
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise BadRequest(f"{where}.shape: must be a list of whole numbers")
    expected, tail = info.shape, info.fixed_tail
    if len(shape) != len(expected) or (
        shape[1:] != tail
        if tail is not None
        else any(w != -1 and d != w for d, w in zip(shape[1:], expected[1:], strict=True))
    ):
        want = ["batch" if d == -1 else d for d in expected]
        raise BadRequest(f"{where}.shape: input '{info.name}' takes {want}, not {shape}")
    if shape[0] < 1 or min(shape) < 0:
        raise BadRequest(f"{where}.shape: {shape} needs at least one row and no negative sizes")
    if shape[0] > MAX_ROWS:
        raise BadRequest(f"{where}.shape: {shape[0]} rows is more than {MAX_ROWS} per request")
    return shape


def _from_json(data: Any, field: str, info: TensorInfo, shape: list[int], count: int) -> np.ndarray:
    """JSON numbers (flat or nested, row-major) as an array of the input's dtype."""
    if not isinstance(data, list):
        raise BadRequest(f"{field}: must be a list of numbers, not {_kind(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{field}: nested lists of unequal length or mixed types") from None
    if array.dtype.kind not in "iuf" and not (array.dtype.kind == "b" and info.dtype == "bool"):
        if array.size == 0 and count == 0:
            array = array.astype(info.dtype)
        else:
            raise BadRequest(f"{field}: must hold only numbers (found {_elements(array)})")
    if array.size != count:
        raise BadRequest(f"{field}: {array.size} values, but shape {shape} needs {count}")
    target = info.numpy_dtype
    if target.kind in "iu" and array.dtype.kind == "f":
        raise BadRequest(f"{field}: {info.datatype} needs whole numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target).reshape(shape)
    if target.kind == "f" and not np.isfinite(converted).all():  # one pass in the usual case
        if np.isfinite(array).all():
            raise BadRequest(f"{field}: a value is out of range for {info.datatype}")
        raise BadRequest(_not_finite(field, info))
    if target.kind in "iu" and not np.array_equal(converted, array.reshape(shape)):
        raise BadRequest(f"{field}: a value is out of range for {info.datatype}")
    return converted


def _elements(array: np.ndarray) -> str:
    kind = array.dtype.kind
    return {"U": "text", "S": "text", "b": "true/false", "O": "null or objects"}.get(kind, kind)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be an object, not {_kind(value)}")
    return value


def _outputs(request: dict[str, Any], model: ServedModel, binary_default: bool):
    raw = request.get("outputs")
    if raw is None:
        return [(n, binary_default) for n in model.output_names]
    if not isinstance(raw, list):
        raise BadRequest(f"outputs: must be a list, not {_kind(raw)}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{i}]: must be an object with a name")
        check_output(f"outputs[{i}]", item["name"], model)
        binary = _parameters(item.get("parameters"), f"outputs[{i}].parameters").get(
            "binary_data", binary_default
        )
        if not isinstance(binary, bool):
            raise BadRequest(f"outputs[{i}].parameters.binary_data: must be true or false")
        out.append((item["name"], binary))
    return out


def check_output(at: str, name: str, model: ServedModel) -> None:
    """A requested output is one the model has (both transports)."""
    if name not in model.outputs_by_name:
        names = ", ".join(model.output_names)
        raise BadRequest(
            f"{at}.name: model '{model.name}' has no output '{name}' (outputs: {names})"
        )


def little_endian(array: np.ndarray) -> bytes:
    """A tensor's bytes as the protocol sends them: row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def infer_response(
    model: ServedModel, request: InferRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and extra headers (the JSON length when binary tensors follow)."""
    infos = model.outputs_by_name
    outputs, blobs = [], []
    for name, binary in request.outputs:
        array = results[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": output_datatype(array, infos[name]),
            "shape": list(array.shape),
        }
        if binary:
            blob = little_endian(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    head = orjson.dumps(body)
    if not blobs:
        return head, {}
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def output_datatype(array: np.ndarray, info: TensorInfo) -> str:
    """The output's protocol datatype: the model's declared one when the array has its dtype
    (always, from ONNX Runtime; a dtype comparison is cheap, `dtype.name` is not)."""
    if array.dtype == info.numpy_dtype:
        return info.datatype
    return DATATYPES.get(array.dtype.name, info.datatype)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


# --------------------------------------------------------------------------- plain JSON


MAX_SAMPLES = 64


def choose_model(request: dict[str, Any], models: dict[str, ServedModel]) -> ServedModel:
    """`model` names one of the served models; it may be left out when there is only one."""
    name = request.get("model")
    if name is None:
        if len(models) == 1:
            return next(iter(models.values()))
        raise BadRequest(f"model: missing; this server has several ({', '.join(models)})")
    if not isinstance(name, str):
        raise BadRequest(f"model: must be a string, not {_kind(name)}")
    if name not in models:
        raise BadRequest(f"model: unknown model '{name}' (serving: {', '.join(models)})", 404)
    return models[name]


def parse_predict(request: Any, models: dict[str, ServedModel]) -> tuple[ServedModel, np.ndarray]:
    """`{"model": NAME, "inputs": one sample or a list of samples, "normalised": false}`:
    raw values (as the data came, e.g. pixel intensities 0..16), normalised here unless
    `normalised` is true. A sample may also be given flat; a table model's sample is a row,
    `{"column": value, ...}` (see `encode_rows`)."""
    if not isinstance(request, dict):
        raise BadRequest(f"the request must be a JSON object, not {_kind(request)}")
    model = choose_model(request, models)
    if model.task == "generative":
        raise BadRequest(f"model '{model.name}' is a generator: POST /sample instead")
    if len(model.inputs) != 1:
        raise BadRequest(f"model '{model.name}' has several inputs: use /v2/models/.../infer")
    normalised = request.get("normalised", False)
    if not isinstance(normalised, bool):
        raise BadRequest("normalised: must be true or false")
    info = model.inputs[0]
    if "inputs" not in request:
        raise BadRequest("inputs: missing (one sample, or a list of samples)")
    data = request["inputs"]
    table = model.normalisation
    if table.get("kind") == "table" and not normalised:
        encoded = encode_rows(table, data).astype(info.dtype)
        if not np.isfinite(encoded).all():
            raise BadRequest("inputs: a value is out of range once normalised")
        return model, encoded
    if not isinstance(data, list) or not data:
        raise BadRequest(f"inputs: must be a non-empty list of numbers, not {_kind(data)}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest("inputs: nested lists of unequal length or mixed types") from None
    if raw.dtype.kind not in "iuf":
        raise BadRequest(f"inputs: must hold only numbers (found {_elements(raw)})")
    raw = raw.astype(np.float64)
    if not np.isfinite(raw).all():
        raise BadRequest("inputs: contains NaN or infinity")
    sample = tuple(info.shape[1:])
    size = math.prod(sample)
    core = _squeezed(sample)
    if raw.size == size and (_squeezed(raw.shape) == core or raw.ndim == 1):
        raw = raw.reshape(1, *sample)
    elif raw.ndim > 1 and (_squeezed(raw.shape[1:]) == core or raw.shape[1:] == (size,)):
        raw = raw.reshape(len(raw), *sample)
    else:
        raise BadRequest(
            f"inputs: shape {list(raw.shape)} is neither one sample {list(sample)} (or "
            f"{size} values) nor a list of them"
        )
    if len(raw) > MAX_ROWS:
        raise BadRequest(f"inputs: {len(raw)} samples is more than {MAX_ROWS} per request")
    x = raw.astype(info.dtype) if normalised else model.normalise(raw)
    if not np.isfinite(x).all():
        raise BadRequest("inputs: a value is out of range once normalised")
    return model, x


def encode_rows(table: dict[str, Any], data: Any) -> np.ndarray:
    """A table model's raw rows (`{"column": value}`: numbers, text, true/false, null) as its
    inputs, encoded as the `table` data plugin encoded its training data (`table` is the
    export's normalisation): a number standardised, a missing one imputed with the training
    mean and flagged where training had missing values; a category one-hot, a value training
    never saw in the unknown slot, a missing one in its own slot (the unknown one when
    training had no missing values). A column left out is missing; the target is ignored."""
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise BadRequest(
            "inputs: must be a row (an object of column: value) or a non-empty list of rows, "
            f"not {_kind(data)}"
        )
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"inputs: {len(rows)} rows is more than {MAX_ROWS} per request")
    columns = table.get("columns", [])
    names = [c["name"] for c in columns]
    known = {*names, table.get("target")}
    slots = [{v: k for k, v in enumerate(c.get("values", []))} for c in columns]
    width = sum(
        1 + c["missing"] if c["type"] == "number" else len(c["values"]) + 1 + c["missing"]
        for c in columns
    )
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"inputs[{i}]: must be an object of column: value, not {_kind(row)}")
        for key in row:
            if key not in known:
                raise BadRequest(
                    f"inputs[{i}]: unknown column '{key}' (the model takes: {', '.join(names)})"
                )
        at = 0
        for column, slot in zip(columns, slots, strict=True):
            name, value = column["name"], row.get(column["name"])
            if column["type"] == "number":
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise BadRequest(
                            f"inputs[{i}].{name}: column '{name}' takes a number or null, "
                            f"not {_kind(value)}"
                        )
                    try:
                        out[i, at] = (float(value) - column["mean"]) / column["std"]
                    except OverflowError:
                        raise BadRequest(f"inputs[{i}].{name}: {value} is out of range") from None
                if column["missing"]:
                    out[i, at + 1] = value is None
                at += 1 + column["missing"]
                continue
            unknown = len(slot)
            if value is None:
                index = unknown + 1 if column["missing"] else unknown
            else:
                text = _category(value, column["dtype"], f"inputs[{i}].{name}", name)
                index = slot.get(text, unknown)
            out[i, at + index] = 1.0
            at += unknown + 1 + column["missing"]
    return out


def _category(value: Any, dtype: str, where: str, column: str) -> str:
    """A category's value as the text training saw: true/false, whole numbers, text."""
    if dtype == "bool" and isinstance(value, bool):
        return "true" if value else "false"
    if dtype == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and dtype != "bool":
        return value
    takes = {"bool": "true/false", "integer": "a whole number or text"}.get(dtype, "text")
    raise BadRequest(f"{where}: column '{column}' takes {takes} or null, not {_kind(value)}")


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def parse_sample(request: Any, models: dict[str, ServedModel]) -> tuple[ServedModel, int, int]:
    """`{"model": NAME, "n": 16, "seed": 0}` for a generator; returns model, n and seed."""
    import secrets

    if not isinstance(request, dict):
        raise BadRequest(f"the request must be a JSON object, not {_kind(request)}")
    model = choose_model(request, models)
    if model.latent_shape is None:
        raise BadRequest(
            f"model '{model.name}' is not a generator with one latent input "
            f"(task: {model.task}): POST /predict instead"
        )
    n = request.get("n", 16)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise BadRequest(f"n: must be a whole number from 1 to {MAX_SAMPLES}")
    seed = request.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BadRequest("seed: must be a whole number from 0")
    return model, n, seed
