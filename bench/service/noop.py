"""The transports' own ceilings (bench/README.md, "Service"): servers that read a request and answer a
constant, so that every figure of mnist-serve's can be set against what its transport can do at all.

- `app`: a WSGI callable for gunicorn with mnist-serve's own configuration and gevent worker
  (`gunicorn -c python:mnist_service.process.gunicorn_config bench.service.noop:app`).
- `python -m bench.service.noop PORT`: grpc.aio serving `inference.GRPCInferenceService` with the
  generated servicer class, ModelInfer answered with a fixed ModelInferResponse (the request is
  still parsed by protobuf, as every generated servicer's is).
The answers have the size and shape of mnist-serve's for one image.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import orjson

PROBABILITIES = [0.001] * 7 + [0.991] + [0.001] * 2
ANSWER = orjson.dumps({"model": {"name": "mnist", "version": 1},
                       "predictions": [{"label": 7, "confidence": 0.991, "probabilities": PROBABILITIES}]})
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def app(environ, start_response):
    environ["wsgi.input"].read()  # a server must take the body in before it answers
    start_response("200 OK", list(HEADERS))
    return [ANSWER]


def fixed_response():
    from mnist_service.grpc.proto import grpc_predict_v2_pb2 as pb

    response = pb.ModelInferResponse(model_name="mnist", model_version="1")
    for name, datatype, values in (("probabilities", "FP32", np.float32([PROBABILITIES])),
                                   ("label", "INT64", np.int64([[7]])), ("confidence", "FP32", np.float32([[0.991]]))):
        response.outputs.add(name=name, datatype=datatype, shape=list(values.shape))
        response.raw_output_contents.append(values.tobytes())
    return response


async def serve_grpc(port: int) -> None:
    import grpc

    from mnist_service.grpc.proto import grpc_predict_v2_pb2 as pb
    from mnist_service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    answer = fixed_response()

    class Constant(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=True)

        async def ModelInfer(self, request, context):
            return answer

    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Constant(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve_grpc(int(sys.argv[1])))
