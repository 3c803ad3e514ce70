"""ModelInferRequests for the digits CNN, valid and malformed, built from whichever message
classes a process holds (tritonclient's, or plexa's own: a process can import only one of the
two, as plexa.serving.grpc_server says)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def valid(pb: ModuleType, rows: int, values: np.ndarray) -> Any:
    """The request tritonclient.grpc sends: raw FP32 contents, the model's shape."""
    request = pb.ModelInferRequest(model_name="digits-cnn")
    request.inputs.add(name="input", datatype="FP32", shape=[rows, 1, 8, 8])
    request.raw_input_contents.append(values.astype(np.float32).tobytes())
    return request


def malformed(pb: ModuleType, rng: np.random.Generator) -> Any:
    """A valid request (1-3 rows of digits, raw contents) with one to three things wrong."""
    rows = int(rng.integers(1, 4))
    values = rng.random(rows * 64).astype(np.float32)
    request = valid(pb, rows, values)
    request.id = f"f{rng.integers(1 << 30)}"
    tensor = request.inputs[0]
    datatypes = ["FP16", "FP64", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "", "fp32"]
    for _ in range(int(rng.integers(1, 4))):
        match int(rng.integers(14)):
            case 0:
                tensor.datatype = str(rng.choice(datatypes))
            case 1:  # wrong shape: rank, sizes, negative, zero or huge
                dims = rng.integers(-3, 70, size=int(rng.integers(0, 6))).tolist()
                tensor.ClearField("shape")
                tensor.shape.extend(dims if rng.random() < 0.8 else [2**40, 1, 8, 8])
            case 2 if request.raw_input_contents:  # raw contents of the wrong length
                raw = request.raw_input_contents[0]
                cut = int(rng.integers(0, len(raw) + 8))
                request.raw_input_contents[0] = (raw + b"\0" * 8)[:cut]
            case 3:  # typed contents instead, of the wrong count or the wrong field
                del request.raw_input_contents[:]
                field = str(
                    rng.choice(
                        [
                            "fp32_contents",
                            "fp64_contents",
                            "int64_contents",
                            "int_contents",
                            "bool_contents",
                            "uint_contents",
                        ]
                    )
                )
                count = int(rng.choice([rows * 64, rows * 64 - 1, 0, 3]))
                kind = bool if field == "bool_contents" else (float if "fp" in field else int)
                getattr(tensor.contents, field).extend(kind(v) for v in range(count))
            case 4:  # both raw and typed contents
                tensor.contents.fp32_contents.extend([0.5] * rows * 64)
            case 5:  # NaN or infinity, where no input may hold one
                bad = values.copy()
                bad[int(rng.integers(len(bad)))] = rng.choice([np.nan, np.inf, -np.inf])
                if request.raw_input_contents:
                    request.raw_input_contents[0] = bad.tobytes()
                else:
                    tensor.contents.fp32_contents[:] = bad.tolist()
            case 6:  # missing inputs
                del request.inputs[:]
            case 7:  # an extra input, or the same one twice
                request.inputs.add(
                    name=str(rng.choice(["extra", "input"])), datatype="FP32", shape=[rows, 1, 8, 8]
                )
            case 8:  # raw contents that do not match the number of inputs
                request.raw_input_contents.append(values.tobytes()[: int(rng.integers(0, 9))])
            case 9:
                tensor.name = str(rng.choice(["", "output", "INPUT", "x" * 300]))
            case 10:
                request.model_name = str(rng.choice(["", "nope", "gen", "digits-cnn/1"]))
            case 11:
                request.outputs.add(name=str(rng.choice(["output", "nope", ""])))
            case 12 if tensor.shape:  # rows out of range: none, or more than a request may hold
                tensor.shape[0] = int(rng.choice([0, -1, 4097]))
            case _:
                request.Clear()  # empty
    return request


def agree(export: str, count: int) -> None:
    """Prints how many of the usual request and `count` malformed ones the one-pass check
    takes, and the total; fails when it takes one the general checks refuse, or gives other
    arrays."""
    from pathlib import Path

    from plexa.serving import grpc_protocol
    from plexa.serving.model import load
    from plexa.serving.proto import grpc_predict_v2_pb2 as pb
    from plexa.serving.protocol import BadRequest, check_inputs

    model = load(Path(export), "digits-cnn", export)
    rng = np.random.default_rng(16)
    usual = valid(pb, 2, rng.random(128))
    edges = [valid(pb, rows, np.zeros(rows * 64)) for rows in (4096, 4097)]  # MAX_ROWS and over
    taken = 0
    requests = [usual, *edges, *(malformed(pb, rng) for _ in range(count))]
    for i, request in enumerate(requests):
        raw = request.raw_input_contents
        quick = grpc_protocol._raw_feeds(request.inputs, raw, model)
        try:  # what parse_infer checks first, then the general checks
            if not request.inputs or (raw and len(raw) != len(request.inputs)):
                raise BadRequest("inputs: missing, or not one raw entry each")
            general = check_inputs(grpc_protocol._tensors(request, raw), model)
        except BadRequest as exc:
            assert quick is None, (request, exc)
            continue
        if i == 0:
            assert quick is not None, "the usual request takes the general path"
        if quick is not None:
            taken += 1
            assert quick[1] == general[1] and quick[0].keys() == general[0].keys()
            for name, array in quick[0].items():
                assert array.dtype == general[0][name].dtype
                np.testing.assert_array_equal(array, general[0][name])
    print(taken, len(requests))
