"""The Open Inference Protocol v2 wire format (KServe v2 / Triton / MLServer REST): JSON and
binary tensors in, JSON and binary tensors out.

Clients written for those servers (tritonclient, KServe's REST client) work here unchanged. The
protocol's routes answer errors in its own form {"error": "<message>"} (errors.error_body_for). No
WSGI here: the gRPC codec (grpc/codec.py) shares these checks.
"""

from __future__ import annotations

import math
import reprlib

import numpy as np
import orjson

from mnist_artifact.format import PIXELS, SIDE
from mnist_artifact.options import parse_bool

from ..dataplane.metadata import CLASSES, INPUT, OUTPUTS
from ..dataplane.options import Limits, check_batch
from ..errors import ApiError

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_KEY = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"  # its key in a WSGI environ
INPUT_TYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}  # binary tensors are little-endian
INPUT_SHAPES = ([PIXELS], [SIDE, SIDE])  # after the batch dimension
OUTPUT_TYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def _brief(value) -> str:
    """A caller's value in an error message, cut short: it may be megabytes."""
    return reprlib.repr(value)


class InferRequest:
    """A decoded infer request: its pixels (N, 784) float32 on 0..255, its id, the outputs asked for.
    `header_length`: the Inference-Header-Content-Length header, when binary tensors follow the JSON."""

    def __init__(self, body: bytes, header_length: str | None, limits: Limits):
        head, binary = _split_body(body, header_length)
        doc = _load_header(head)
        self.id = doc.get("id")
        if self.id is not None and not isinstance(self.id, str):
            raise bad(f'"id" must be a string, got {_brief(self.id)}')
        self.outputs = requested_outputs(doc)
        self.pixels = _input_pixels(doc, binary, limits)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (binary tensor data extension)."""
    if header_length is None:
        return body, b""
    n = int(header_length) if header_length.isascii() and header_length.isdigit() and len(header_length) < 19 else -1
    if not 0 <= n <= len(body):
        raise bad(f"{HEADER_LENGTH} must be a byte count within the body ({len(body)} bytes), "
                  f"got {_brief(header_length)}")
    return body[:n], body[n:]


def _load_header(head: bytes) -> dict:
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise bad(f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise bad('expected a JSON object like {"inputs": [...]}')
    return doc


def _parameters(obj: dict) -> dict:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad(f'"parameters" must be an object, got {_brief(parameters)}')
    return parameters


def _flag(parameters: dict, key: str, default: bool = False) -> bool:
    try:
        return parse_bool(f"parameter {key!r}", parameters.get(key, default), text=False)
    except ValueError as e:
        raise bad(str(e)) from None


def _input_pixels(doc: dict, binary: bytes, limits: Limits) -> np.ndarray:
    """The one input tensor as (N, 784) float32 pixels on the service's 0..255 scale."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f'"inputs" must be a list of one tensor, named {INPUT!r}')
    tensor = inputs[0]
    datatype, shape = check_input(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), limits)
    parameters = _parameters(tensor)
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise bad(f'input {INPUT!r} has both "data" and a "binary_data_size" parameter')
        values = _binary_values(parameters["binary_data_size"], binary, shape, INPUT_TYPES[datatype])
    else:
        if binary:
            raise bad(f"{len(binary)} bytes of binary data follow the JSON, but no input has a binary_data_size")
        values = list_values(tensor.get("data"), shape, datatype)
    return to_pixels(values, datatype)


def check_input(name, datatype, shape, limits: Limits) -> tuple[str, tuple[int, ...]]:
    """The input tensor's datatype and shape, checked (the batch against MAX_BATCH)."""
    if name != INPUT:
        raise bad(f"unknown input {_brief(name)}; the model's input is {INPUT!r}")
    if datatype not in INPUT_TYPES:
        raise bad(f"input {INPUT!r}: datatype must be FP32 (pixels in [0, 1]) or UINT8 (pixels 0..255), "
                  f"got {_brief(datatype)}")
    return datatype, input_shape(shape, limits)


def input_shape(shape, limits: Limits) -> tuple[int, ...]:
    valid = (isinstance(shape, list) and len(shape) in (2, 3) and all(type(d) is int for d in shape)
             and shape[1:] in INPUT_SHAPES and shape[0] >= 1)
    if not valid:
        raise bad(f"input {INPUT!r}: shape must be [N, 784] or [N, 28, 28] with N >= 1, got {_brief(shape)}")
    check_batch(shape[0], limits)  # 413 before any data is decoded
    return tuple(shape)


def _binary_values(size, binary: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    count = math.prod(shape)
    if type(size) is not int or size != count * dtype.itemsize:
        raise bad(f"input {INPUT!r}: binary_data_size must be {count * dtype.itemsize} for shape {list(shape)} "
                  f"of {dtype.itemsize}-byte values, got {_brief(size)}")
    if size > len(binary):
        raise bad(f"input {INPUT!r}: binary_data_size {size} runs past the end of the body "
                  f"({len(binary)} bytes follow the JSON)")
    if size < len(binary):
        raise bad(f"{len(binary) - size} unexpected bytes after the binary data of input {INPUT!r}")
    return np.frombuffer(binary, dtype, count).reshape(shape[0], PIXELS)


def list_values(data, shape: tuple[int, ...], datatype: str, field: str = "data") -> np.ndarray:
    """`data` flat (row-major) or nested, counted as Triton counts it: by elements, whatever the
    nesting. Numbers only, integers for UINT8. `field` names it in errors."""
    if not isinstance(data, list | np.ndarray):
        raise bad(f'input {INPUT!r} needs "data" (a list) or a "binary_data_size" parameter')
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, numbers beyond 64 bits
        raise bad(f"input {INPUT!r}: data must be a flat or evenly nested list of numbers") from None
    kinds, wanted = ("iu", "integers") if datatype == "UINT8" else ("iuf", "numbers")
    if values.size and values.dtype.kind not in kinds:
        raise bad(f"input {INPUT!r}: {datatype} {field} must be {wanted}")
    count = math.prod(shape)
    if values.size != count:
        raise bad(f"input {INPUT!r}: {field} has {values.size} values; shape {list(shape)} needs {count}")
    return values.reshape(shape[0], PIXELS)


def to_pixels(values: np.ndarray, datatype: str) -> np.ndarray:
    """FP32 is [0, 1] (scaled x255), UINT8 is 0..255 as is: the service's scale is 0..255."""
    if datatype == "UINT8":
        if values.dtype != np.uint8 and (values.min() < 0 or values.max() > 255):
            raise bad(f"UINT8 pixels must be in 0..255, found {values.min()}..{values.max()}")
        return values.astype(np.float32)
    low, high = float(values.min()), float(values.max())  # NaN if there is one
    if not (low >= 0 and high <= 1):
        if not np.isfinite(values).all():
            raise bad("FP32 pixels must be finite: found NaN or infinity")
        raise bad(f"FP32 pixels must be in [0, 1], found {low:g}..{high:g} (send 0..255 as UINT8)")
    return np.multiply(values, 255, dtype=np.float32)  # in float32, as /v1/predict scales [0, 1] pixels


def requested_outputs(doc: dict) -> list[tuple[str, bool, int]]:
    """(name, binary, class_count) of each output to return: those named, else all of them."""
    binary_default = _flag(_parameters(doc), "binary_data_output")
    outputs = doc.get("outputs")
    if not outputs:
        return [(name, binary_default, 0) for name in OUTPUTS]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise bad('"outputs" must be a list like [{"name": "probabilities"}]')
    requested = []
    for output in outputs:
        name = output.get("name")
        if name not in OUTPUTS:
            raise bad(f"unknown output {_brief(name)}; the model's outputs are {list(OUTPUTS)}")
        parameters = _parameters(output)
        requested.append((name, _flag(parameters, "binary_data", binary_default), _class_count(name, parameters)))
    if len({name for name, _, _ in requested}) < len(requested):
        raise bad("an output is named twice")
    return requested


def _class_count(name: str, parameters: dict) -> int:
    count = parameters.get("classification", 0)
    if type(count) is not int or count < 0:
        raise bad(f'parameter "classification" must be a count >= 0, got {_brief(count)}')
    if count and name != "probabilities":
        raise bad(f'classification is available for "probabilities", not {name!r}')
    return min(count, CLASSES)  # as Triton does: at most every class


def _classification(probabilities: np.ndarray, count: int) -> list[str]:
    """Top `count` classes per row, most probable first, as Triton writes them: "<value>:<index>",
    the value printed as C's %f (Triton's std::to_string)."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    return [f"{p[i]:f}:{i}" for p, row in zip(probabilities.tolist(), top.tolist()) for i in row]


def output_tensor(name: str, class_count: int, probabilities: np.ndarray) -> tuple[str, list[int], object]:
    """(datatype, shape, flat values) of one output."""
    n = len(probabilities)
    if class_count:
        return "BYTES", [n, class_count], _classification(probabilities, class_count)
    if name == "probabilities":
        return "FP32", [n, CLASSES], probabilities.ravel()
    return "INT64", [n], probabilities.argmax(axis=1)


def raw_bytes(datatype: str, values) -> bytes:
    """Binary tensor data: little-endian, row-major; BYTES elements each after a 4-byte length."""
    if datatype == "BYTES":
        encoded = [v.encode() for v in values]
        return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    return np.ascontiguousarray(values, OUTPUT_TYPES[datatype]).tobytes()


def encode_response(model, request: InferRequest, probabilities: np.ndarray) -> tuple[bytes, list[tuple[str, str]]]:
    """The response body and its headers: JSON alone, or a JSON header followed by binary outputs."""
    request_id, requested = request.id, request.outputs
    header = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        header["id"] = request_id
    outputs, chunks = [], []
    for name, binary, class_count in requested:
        datatype, shape, values = output_tensor(name, class_count, probabilities)
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunks.append(raw_bytes(datatype, values))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = values
        outputs.append(tensor)
    header["outputs"] = outputs
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, [("Content-Type", "application/json")]
    # The JSON header, then each binary output in the order the header lists them.
    return b"".join([head, *chunks]), [("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(len(head)))]
