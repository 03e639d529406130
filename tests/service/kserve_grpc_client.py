"""KServe's gRPC client against the service, in a process of its own (test_grpc.py runs it): its
generated modules define the same `inference.*` messages as tritonclient's, and one process cannot
hold both. Also compares the repository's .proto with the descriptor KServe ships.

    python kserve_grpc_client.py HOST:PORT '[[pixel, ...], ...]'   (FP32 rows of 784 in [0, 1])

Prints {"typed": answer, "raw": answer, "proto_matches_kserve": [differences]} as JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb

PROTO = Path(__file__).parents[2] / "service" / "src" / "mnist_service" / "grpc" / "proto" / "grpc_predict_v2.proto"


async def infer(target: str, pixels: list[list[float]]) -> dict:
    client = InferenceGRPCClient(target)
    answers = {}
    for encoding in ("typed", "raw"):
        tensor = InferInput("images", [len(pixels), len(pixels[0])], "FP32")
        if encoding == "typed":
            tensor = InferInput("images", tensor.shape, "FP32", data=[v for row in pixels for v in row])
        else:
            tensor.set_data_from_numpy(np.asarray(pixels, np.float32), binary_data=True)
        response = await client.infer(InferRequest("mnist", [tensor], request_id=encoding))
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        answers[encoding] = {"probabilities": outputs["probabilities"].tolist(), "labels": outputs["labels"].tolist(),
                             "model_version": response.model_version}
    await client.close()
    return answers


def proto_differences() -> list[str]:
    """Messages and fields of the repository's .proto that differ from KServe's (name, number, type, label)."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "set.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}",
                        PROTO.name], check=True)
        ours = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    theirs = descriptor_pb2.FileDescriptorProto()
    kserve_pb.DESCRIPTOR.CopyToProto(theirs)

    def fields(message, prefix=""):
        found = {}
        for field in message.field:
            found[f"{prefix}{message.name}.{field.name}"] = (field.number, field.type, field.label, field.type_name)
        for nested in message.nested_type:
            found.update(fields(nested, f"{prefix}{message.name}."))
        return found

    differences = [] if ours.package == theirs.package else [f"package {ours.package} != {theirs.package}"]
    theirs_messages = {m.name: m for m in theirs.message_type}
    for message in ours.message_type:
        if message.name not in theirs_messages:
            differences.append(f"message {message.name} is not KServe's")
        elif fields(message) != fields(theirs_messages[message.name]):
            differences.append(f"message {message.name} differs")
    their_methods = {(m.name, m.input_type, m.output_type) for m in theirs.service[0].method}
    for method in ours.service[0].method:
        if (method.name, method.input_type, method.output_type) not in their_methods:
            differences.append(f"rpc {method.name} differs")
    return differences


if __name__ == "__main__":
    answers = asyncio.run(infer(sys.argv[1], json.loads(sys.argv[2])))
    print(json.dumps({**answers, "proto_matches_kserve": proto_differences()}))
