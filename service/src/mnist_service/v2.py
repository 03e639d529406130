"""Open Inference Protocol v2 (KServe v2 / Triton / MLServer REST) and the TF Serving v1 path.

Clients written for those servers (tritonclient, KServe's REST client, TF Serving examples) work
here unchanged. The v2 routes answer errors in the protocol's form {"error": "<message>"}; the
TF Serving route is a v1 route and keeps the v1 error form (errors.error_body_for, by path).
"""

from __future__ import annotations

import math
import reprlib
from importlib import metadata

import numpy as np
import orjson
from flask import Blueprint, Response, current_app, request

from . import parsing
from .api import json_response
from .errors import ApiError
from .predict import VERSION, model_for_request, prediction_objects, run_model
from .store import ModelStore

bp = Blueprint("v2", __name__)

SERVER = {"name": "mnist-mlp", "version": metadata.version("mnist-mlp-service"),
          "extensions": ["binary_tensor_data", "classification"]}
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "images"
INPUT_TYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}  # binary tensors are little-endian
INPUT_SHAPES = ([parsing.PIXELS], [parsing.SIDE, parsing.SIDE])  # after the batch dimension
OUTPUT_TYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
OUTPUTS = ("probabilities", "labels")
CLASSES = 10
MODEL_METADATA = {
    "platform": "numpy_mlp",
    "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, parsing.PIXELS]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
                {"name": "labels", "datatype": "INT64", "shape": [-1]}],
}


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def _brief(value) -> str:
    """A caller's value in an error message, cut short: it may be megabytes."""
    return reprlib.repr(value)


# -- models ----------------------------------------------------------------------------------------

def _store() -> ModelStore:
    return current_app.extensions["model_store"]


def _check_name(store: ModelStore, name: str) -> None:
    if name != store.name:
        raise ApiError(404, "model_not_found", f"unknown model {_brief(name)}; this server serves {store.name!r}")


def _model(name: str, version: str | None):
    """The model a path names: 404 for another name or a version not on disk (or invalid),
    503 when no version is asked for and none is serving yet."""
    store = _store()
    _check_name(store, name)
    if version is not None and not VERSION.fullmatch(version):
        raise ApiError(404, "version_not_found", f"model {name!r} has no version {_brief(version)}")
    return model_for_request(store, version)


# -- health and metadata ---------------------------------------------------------------------------

@bp.get("/v2")
def server_metadata():
    return json_response(SERVER)


@bp.get("/v2/health/live")
def server_live():
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def server_ready():
    store = _store()
    if store.current is None:
        return json_response({"ready": False, "error": store.not_ready_reason}, 503)
    return json_response({"ready": True})


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    store = _store()
    if version is None:
        _check_name(store, name)  # metadata needs no loaded model: it describes the interface
    else:
        _model(name, version)
    return json_response({"name": store.name, "versions": [str(v) for v in store.versions()], **MODEL_METADATA})


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    _model(name, version)
    return json_response({"name": name, "ready": True})


# -- inference -------------------------------------------------------------------------------------

@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    model = _model(name, version)
    head, binary = _split_body(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
    doc = _load_header(head)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f'"id" must be a string, got {_brief(request_id)}')
    requested = _requested_outputs(doc)
    pixels = _input_pixels(doc, binary, current_app.extensions["parse_options"])
    probabilities = run_model(model, pixels, request.environ)
    return _infer_response(model, request_id, requested, probabilities)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (binary tensor data extension)."""
    if header_length is None:
        return body, b""
    n = int(header_length) if header_length.isascii() and header_length.isdigit() and len(header_length) < 19 else -1
    if not 0 <= n <= len(body):
        raise _bad(f"{HEADER_LENGTH} must be a byte count within the body ({len(body)} bytes), "
                   f"got {_brief(header_length)}")
    return body[:n], body[n:]


def _load_header(head: bytes) -> dict:
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise _bad(f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _bad('expected a JSON object like {"inputs": [...]}')
    return doc


def _parameters(obj: dict) -> dict:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _bad(f'"parameters" must be an object, got {_brief(parameters)}')
    return parameters


def _flag(parameters: dict, key: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f'parameter "{key}" must be true or false, got {_brief(value)}')
    return value


def _input_pixels(doc: dict, binary: bytes, options: parsing.Options) -> np.ndarray:
    """The one input tensor as (N, 784) float32 pixels on the service's 0..255 scale."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f'"inputs" must be a list of one tensor, named {INPUT!r}')
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise _bad(f"unknown input {_brief(tensor.get('name'))}; the model's input is {INPUT!r}")
    datatype = tensor.get("datatype")
    if datatype not in INPUT_TYPES:
        raise _bad(f"input {INPUT!r}: datatype must be FP32 (pixels in [0, 1]) or UINT8 (pixels 0..255), "
                   f"got {_brief(datatype)}")
    shape = _input_shape(tensor.get("shape"), options)
    parameters = _parameters(tensor)
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise _bad(f'input {INPUT!r} has both "data" and a "binary_data_size" parameter')
        values = _binary_values(parameters["binary_data_size"], binary, shape, INPUT_TYPES[datatype])
    else:
        if binary:
            raise _bad(f"{len(binary)} bytes of binary data follow the JSON, but no input has a binary_data_size")
        values = _json_values(tensor.get("data"), shape, datatype)
    return _to_pixels(values, datatype)


def _input_shape(shape, options: parsing.Options) -> tuple[int, ...]:
    valid = (isinstance(shape, list) and len(shape) in (2, 3) and all(type(d) is int for d in shape)
             and shape[1:] in INPUT_SHAPES and shape[0] >= 1)
    if not valid:
        raise _bad(f"input {INPUT!r}: shape must be [N, 784] or [N, 28, 28] with N >= 1, got {_brief(shape)}")
    parsing.check_batch(shape[0], options)  # 413 before any data is decoded
    return tuple(shape)


def _binary_values(size, binary: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    count = math.prod(shape)
    if type(size) is not int or size != count * dtype.itemsize:
        raise _bad(f"input {INPUT!r}: binary_data_size must be {count * dtype.itemsize} for shape {list(shape)} "
                   f"of {dtype.itemsize}-byte values, got {_brief(size)}")
    if size > len(binary):
        raise _bad(f"input {INPUT!r}: binary_data_size {size} runs past the end of the body "
                   f"({len(binary)} bytes follow the JSON)")
    if size < len(binary):
        raise _bad(f"{len(binary) - size} unexpected bytes after the binary data of input {INPUT!r}")
    return np.frombuffer(binary, dtype, count).reshape(shape[0], parsing.PIXELS)


def _json_values(data, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """`data` flat (row-major) or nested, counted as Triton counts it: by elements, whatever the
    nesting. Numbers only, integers for UINT8."""
    if not isinstance(data, list):
        raise _bad(f'input {INPUT!r} needs "data" (a list) or a "binary_data_size" parameter')
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, numbers beyond 64 bits
        raise _bad(f"input {INPUT!r}: data must be a flat or evenly nested list of numbers") from None
    kinds, wanted = ("iu", "integers") if datatype == "UINT8" else ("iuf", "numbers")
    if values.size and values.dtype.kind not in kinds:
        raise _bad(f"input {INPUT!r}: {datatype} data must be {wanted}")
    count = math.prod(shape)
    if values.size != count:
        raise _bad(f"input {INPUT!r}: data has {values.size} values; shape {list(shape)} needs {count}")
    return values.reshape(shape[0], parsing.PIXELS)


def _to_pixels(values: np.ndarray, datatype: str) -> np.ndarray:
    """FP32 is [0, 1] (scaled x255), UINT8 is 0..255 as is: the service's scale is 0..255."""
    if datatype == "UINT8":
        if values.dtype != np.uint8 and (values.min() < 0 or values.max() > 255):
            raise _bad(f"UINT8 pixels must be in 0..255, found {values.min()}..{values.max()}")
        return values.astype(np.float32)
    if not np.isfinite(values).all():
        raise _bad("FP32 pixels must be finite: found NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise _bad(f"FP32 pixels must be in [0, 1], found {low:g}..{high:g} (send 0..255 as UINT8)")
    return np.multiply(values, 255, dtype=np.float32)  # in float32, as /v1/predict scales [0, 1] pixels


def _requested_outputs(doc: dict) -> list[tuple[str, bool, int]]:
    """(name, binary, class_count) of each output to return: those named, else all of them."""
    binary_default = _flag(_parameters(doc), "binary_data_output")
    outputs = doc.get("outputs")
    if not outputs:
        return [(name, binary_default, 0) for name in OUTPUTS]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _bad('"outputs" must be a list like [{"name": "probabilities"}]')
    requested = []
    for output in outputs:
        name = output.get("name")
        if name not in OUTPUTS:
            raise _bad(f"unknown output {_brief(name)}; the model's outputs are {list(OUTPUTS)}")
        parameters = _parameters(output)
        requested.append((name, _flag(parameters, "binary_data", binary_default), _class_count(name, parameters)))
    if len({name for name, _, _ in requested}) < len(requested):
        raise _bad("an output is named twice")
    return requested


def _class_count(name: str, parameters: dict) -> int:
    count = parameters.get("classification", 0)
    if type(count) is not int or count < 0:
        raise _bad(f'parameter "classification" must be a count >= 0, got {_brief(count)}')
    if count and name != "probabilities":
        raise _bad(f'classification is available for "probabilities", not {name!r}')
    return min(count, CLASSES)  # as Triton does: at most every class


def _classification(probabilities: np.ndarray, count: int) -> list[str]:
    """Top `count` classes per row, most probable first, as Triton writes them: "<value>:<index>",
    the value printed as C's %f (Triton's std::to_string)."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    return [f"{p[i]:f}:{i}" for p, row in zip(probabilities.tolist(), top.tolist()) for i in row]


def _output(name: str, class_count: int, probabilities: np.ndarray) -> tuple[str, list[int], object]:
    """(datatype, shape, flat values) of one output."""
    n = len(probabilities)
    if class_count:
        return "BYTES", [n, class_count], _classification(probabilities, class_count)
    if name == "probabilities":
        return "FP32", [n, CLASSES], probabilities.ravel()
    return "INT64", [n], probabilities.argmax(axis=1)


def _raw(datatype: str, values) -> bytes:
    """Binary tensor data: little-endian, row-major; BYTES elements each after a 4-byte length."""
    if datatype == "BYTES":
        encoded = [v.encode() for v in values]
        return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    return np.ascontiguousarray(values, OUTPUT_TYPES[datatype]).tobytes()


def _infer_response(model, request_id: str | None, requested, probabilities: np.ndarray) -> Response:
    header = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        header["id"] = request_id
    outputs, chunks = [], []
    for name, binary, class_count in requested:
        datatype, shape, values = _output(name, class_count, probabilities)
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunks.append(_raw(datatype, values))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = values
        outputs.append(tensor)
    header["outputs"] = outputs
    if not chunks:
        return json_response(header)
    # The JSON header, then each binary output in the order the header lists them.
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    response = Response(b"".join([head, *chunks]), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(head))
    return response


# -- TF Serving / KServe v1 ------------------------------------------------------------------------

@bp.post("/v1/models/<name>:predict")
@bp.post("/v1/models/<name>/versions/<int:version>:predict")
def tf_serving_predict(name: str, version: int | None = None):
    """TF Serving's REST predict: a JSON body as /v1/predict takes it (any Content-Type, as TF
    Serving accepts `curl -d`), answered {"predictions": [...]} with /v1/predict's predictions."""
    model = _model(name, None if version is None else str(version))
    pixels, options = parsing.parse_json_request(request.get_data(cache=False),
                                                 current_app.extensions["parse_options"])
    probabilities = run_model(model, pixels, request.environ)
    return json_response({"predictions": prediction_objects(probabilities, pixels if options.include_input else None)})

