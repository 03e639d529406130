"""The Open Inference Protocol over gRPC: a ModelInferRequest decoded and a ModelInferResponse
encoded with the checks and outputs of the REST form (codecs/v2.py), so both answer alike.

Inputs come as `raw_input_contents` (tritonclient.grpc's default) or as typed `contents` (KServe's
client, given Python lists): FP32 in `fp32_contents`, UINT8 in `uint_contents`. Numeric outputs go
back in `raw_output_contents` only, as Triton answers: tritonclient.grpc's `as_numpy` reads nothing
else for them.
"""

from __future__ import annotations

import numpy as np

from mnist_artifact.format import PIXELS

from ..codecs import v2
from ..codecs.v2 import INPUT_TYPES, bad
from ..dataplane.metadata import INPUT, MODEL_METADATA
from ..dataplane.options import Limits
from .proto import grpc_predict_v2_pb2 as pb

CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}  # the typed field of each input datatype


def _parameter(value: pb.InferParameter):
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(parameters) -> dict:
    return {key: _parameter(value) for key, value in parameters.items()}


def decode_pixels(request: pb.ModelInferRequest, limits: Limits) -> np.ndarray:
    """The one input tensor as (N, 784) float32 pixels on the service's 0..255 scale."""
    if len(request.inputs) != 1:
        raise bad(f"a request has one input tensor, named {INPUT!r}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    datatype, shape = v2.check_input(tensor.name, tensor.datatype, list(tensor.shape), limits)
    if request.raw_input_contents:
        values = _raw_values(request, tensor, shape, INPUT_TYPES[datatype])
    else:
        values = _typed_values(tensor, shape, datatype)
    return v2.to_pixels(values, datatype)


def _raw_values(request: pb.ModelInferRequest, tensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(request.raw_input_contents) != 1:
        raise bad(f"raw_input_contents must hold one entry per input (1), got {len(request.raw_input_contents)}")
    if tensor.HasField("contents"):
        raise bad(f"input {INPUT!r} has both contents and raw_input_contents")
    raw = request.raw_input_contents[0]
    count = int(np.prod(shape))
    if len(raw) != count * dtype.itemsize:
        raise bad(f"input {INPUT!r}: raw_input_contents must be {count * dtype.itemsize} bytes for shape "
                  f"{list(shape)} of {dtype.itemsize}-byte values, got {len(raw)}")
    return np.frombuffer(raw, dtype, count).reshape(shape[0], PIXELS)


def _typed_values(tensor, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    field = CONTENTS[datatype]
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if filled and filled != [field]:
        raise bad(f"input {INPUT!r}: {datatype} values go in contents.{field}, got {', '.join(filled)}")
    values = getattr(tensor.contents, field)
    # uint32 contents arrive as Python ints; as int64 so that a value past 255 is refused, not wrapped
    array = np.asarray(values, np.float32 if datatype == "FP32" else np.int64)
    return v2.list_values(array, shape, datatype, f"contents.{field}")


def requested_outputs(request: pb.ModelInferRequest) -> list[tuple[str, int]]:
    """(name, class_count) of each output to return, checked as the REST form checks them."""
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    return [(name, class_count) for name, _, class_count in v2.requested_outputs({"outputs": outputs})]


def encode_response(model, request: pb.ModelInferRequest, outputs: list[tuple[str, int]],
                    probabilities: np.ndarray) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name, class_count in outputs:
        datatype, shape, values = v2.output_tensor(name, class_count, probabilities)
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(v2.raw_bytes(datatype, values))
    return response


def model_metadata(name: str, versions: list[int]) -> pb.ModelMetadataResponse:
    """The REST form's model metadata (dataplane/metadata.py) as a message."""
    metadata = MODEL_METADATA
    return pb.ModelMetadataResponse(
        name=name, versions=[str(v) for v in versions], platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]])
