"""Open Inference Protocol over gRPC: a ModelInferRequest as checked inputs, outputs as a
ModelInferResponse.

The checks are the REST side's (`protocol.check_inputs`), so both transports refuse the same
requests with the same words; only what is gRPC's own is checked here: which typed contents
field holds an input's values, and `raw_input_contents` (one entry per input, or none).

The request clients send (`tritonclient.grpc`, Triton's and KServe's own: every input's values
in raw_input_contents, shapes the model's) is checked in one pass by `_raw_feeds`, which accepts
nothing the general checks would refuse and gives up on anything else, for them to report; on
a small model the general checks cost a fifth of the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from plexa.serving.proto import grpc_predict_v2_pb2 as pb
from plexa.serving.protocol import (
    MAX_ROWS,
    BadRequest,
    InferRequest,
    Tensor,
    all_finite,
    check_inputs,
    check_output,
    little_endian,
    output_datatype,
    raw_array,
)

if TYPE_CHECKING:
    import numpy as np

    from plexa.serving.model import ServedModel

# the InferTensorContents field that holds each datatype's values (FP16 has none: raw only)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_infer(request: pb.ModelInferRequest, model: ServedModel) -> InferRequest:
    """Check a ModelInferRequest against the model's inputs and outputs."""
    inputs = request.inputs
    if not inputs:
        raise BadRequest("inputs: is missing")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(
            f"raw_input_contents: {len(raw)} entries for {len(inputs)} inputs "
            "(one per input, or none and each input's contents)"
        )
    feeds, rows = _raw_feeds(inputs, raw, model) or check_inputs(_tensors(request, raw), model)
    outputs = []
    for i, wanted in enumerate(request.outputs):
        check_output(f"outputs[{i}]", wanted.name, model)
        outputs.append((wanted.name, True))
    if not outputs:
        outputs = [(name, True) for name in model.output_names]
    return InferRequest(request.id or None, feeds, rows, outputs)


def _raw_feeds(
    inputs: Sequence[pb.ModelInferRequest.InferInputTensor],
    raw: Sequence[bytes],
    model: ServedModel,
) -> tuple[dict[str, np.ndarray], int] | None:
    """The feeds of a request whose every input has its values in raw_input_contents and the
    model's own shape (batch axis aside), when each passes every check `check_inputs` makes;
    None for any other request (`check_inputs` then accepts it or says what is wrong)."""
    expected = model.inputs_by_name
    if len(raw) != len(expected) or len(inputs) != len(expected):
        return None
    feeds: dict[str, np.ndarray] = {}
    rows = 0
    for i in range(len(inputs)):  # (indexing protobuf's containers is quicker than zip)
        item, data = inputs[i], raw[i]
        name = item.name
        info = expected.get(name)
        if (
            info is None
            or name in feeds
            or item.datatype != info.datatype
            or item.HasField("contents")
        ):
            return None
        shape, tail = item.shape, info.fixed_tail
        if tail is None or len(shape) != len(info.shape) or shape[1:] != tail:
            return None
        first = shape[0]
        if not 0 < first <= MAX_ROWS or (rows and first != rows):
            return None
        array = raw_array(data, info, [first, *tail])  # (a list: quicker than protobuf's)
        if array is None or not all_finite(array):
            return None
        feeds[name] = array
        rows = first
    return feeds, rows


def _tensors(request: pb.ModelInferRequest, raw: Sequence[bytes]) -> Iterator[Tensor]:
    for i, item in enumerate(request.inputs):
        at = f"inputs[{i}]"
        tensor = Tensor(at, item.name, item.datatype, list(item.shape), f"{at}.contents")
        if raw:
            tensor.raw = raw[i]
            tensor.field = tensor.size_field = f"raw_input_contents[{i}]"
            if item.HasField("contents") and item.contents.ListFields():
                tensor.problem = (
                    f"{at}.contents: has values, but the request sends every input's values in "
                    "raw_input_contents (use one or the other)"
                )
            yield tensor
            continue
        given = [field.name for field, _ in item.contents.ListFields()]
        field = CONTENTS.get(item.datatype)
        if field is None:
            tensor.problem = (
                f"{at}.contents: {item.datatype} has no typed contents field; "
                "send its values in raw_input_contents"
            )
        elif any(name != field for name in given):
            others = ", ".join(name for name in given if name != field)
            tensor.problem = f"{at}.contents: {item.datatype} values go in {field}, not {others}"
        else:
            tensor.field = f"{at}.contents.{field}"
            tensor.values = list(getattr(item.contents, field))
        yield tensor


def infer_response(
    model: ServedModel, request: InferRequest, results: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The response with every output's values in `raw_output_contents`, as Triton answers
    (clients read typed contents or raw ones; raw is one copy, not a list of numbers)."""
    infos = model.outputs_by_name
    response = pb.ModelInferResponse(model_name=model.name, model_version="1", id=request.id or "")
    for name, _ in request.outputs:
        array = results[name]
        response.outputs.add(
            name=name, datatype=output_datatype(array, infos[name]), shape=list(array.shape)
        )
        response.raw_output_contents.append(little_endian(array))
    return response
