"""An inference request and its answer as two CloudEvents 1.0, in the form KServe's logger sends.

Attributes: `ce-type` org.kubeflow.serving.inference.request / .response, one `ce-id` for both (the
id an Open Inference Protocol request gives itself, else the request id: the caller's X-Request-ID
or x-request-id metadata, else the service's own), `ce-time` when the request
arrived, KServe's extensions inferenceservicename, namespace, component and endpoint (default or
canary), and ours: modelversion, modellabel, protocol (http or grpc), status (the HTTP status or the
gRPC code) and dataomitted (why an event carries no data). The data is the Open Inference Protocol's
JSON, whatever the transport and codec: the inputs as the model saw them (UINT8 when they are whole
numbers, else FP32 in [0, 1]), and the outputs probabilities and labels, or {"error": ...}.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import orjson

from ..dataplane.metadata import CLASSES, INPUT

REQUEST, RESPONSE = "request", "response"
TYPES = {REQUEST: "org.kubeflow.serving.inference.request", RESPONSE: "org.kubeflow.serving.inference.response"}
OVERHEAD_BYTES = 512  # what an exchange holds besides its arrays, roughly: counted in the queue's bytes


@dataclass(slots=True)
class Exchange:
    """One inference request and its answer, as the transport recorded them."""

    id: str  # the request's own id (v2 "id"), else the request id (X-Request-ID, or the service's)
    arrived: float  # seconds since the epoch
    protocol: str  # http or grpc
    status: int | str  # HTTP status, or gRPC status code name
    model_version: int | None
    model_label: str | None
    pixels: np.ndarray | None  # (N, 784) on 0..255: what the model was given, when it ran
    probabilities: np.ndarray | None  # (N, 10)
    error: str | None

    def nbytes(self) -> int:
        held = OVERHEAD_BYTES
        for array in (self.pixels, self.probabilities):
            held += 0 if array is None else array.nbytes
        return held


@dataclass(frozen=True)
class Source:
    """What every event of this process says about where it came from."""

    source: str  # the CloudEvents source: urn:mnist-mlp:<host>
    model_name: str
    namespace: str | None
    with_data: bool  # PAYLOAD_LOG_DATA
    max_data_bytes: int  # PAYLOAD_LOG_MAX_EVENT_BYTES

    def attributes(self) -> dict[str, str]:
        """The attributes every event of this process has."""
        attrs = {"specversion": "1.0", "source": self.source, "inferenceservicename": self.model_name,
                 "component": "predictor"}
        return attrs | ({"namespace": self.namespace} if self.namespace else {})

    @functools.cached_property
    def headers(self) -> str:
        return "".join(f"ce-{name}: {value}\r\n" for name, value in self.attributes().items())


def exchange_attributes(exchange: Exchange) -> dict[str, str]:
    """The attributes of both events of one exchange (not their type)."""
    attrs = {"id": exchange.id, "time": _timestamp(exchange.arrived),
             "endpoint": "canary" if exchange.model_label == "canary" else "default",
             "protocol": exchange.protocol, "status": str(exchange.status)}
    if exchange.model_version is not None:
        attrs["modelversion"] = str(exchange.model_version)
    if exchange.model_label:
        attrs["modellabel"] = exchange.model_label
    return attrs


def data(exchange: Exchange, kind: str, source: Source) -> tuple[bytes | None, str | None]:
    """(the event's JSON data, None) or (None, why it has none: "setting", "size", "undecoded")."""
    if not source.with_data:
        return None, "setting"
    body = _request_body(exchange) if kind == REQUEST else _response_body(exchange, source.model_name)
    if body is None:
        return None, "undecoded"  # the request was refused before its inputs were read
    if len(body) > source.max_data_bytes:
        return None, "size"
    return body, None


def _request_body(exchange: Exchange) -> bytes | None:
    pixels = exchange.pixels
    if pixels is None:
        return None
    as_bytes = pixels.astype(np.uint8)
    whole = not (as_bytes != pixels).any()  # np.array_equal costs twice as much
    values = (as_bytes if whole else pixels / np.float32(255)).ravel()
    tensor = {"name": INPUT, "shape": list(pixels.shape), "datatype": "UINT8" if whole else "FP32", "data": values}
    return orjson.dumps({"id": exchange.id, "inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def _response_body(exchange: Exchange, model_name: str) -> bytes:
    if exchange.probabilities is None:
        return orjson.dumps({"error": exchange.error or f"status {exchange.status}"})
    probabilities = exchange.probabilities
    n = len(probabilities)
    outputs = [{"name": "probabilities", "shape": [n, CLASSES], "datatype": "FP32", "data": probabilities.ravel()},
               {"name": "labels", "shape": [n], "datatype": "INT64", "data": probabilities.argmax(axis=1)}]
    return orjson.dumps({"model_name": model_name, "model_version": str(exchange.model_version),
                         "id": exchange.id, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)


@functools.lru_cache(maxsize=4)
def _second(whole_seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_seconds))


def _timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, to the microsecond (the events of one second share the formatting of it)."""
    return f"{_second(int(seconds))}.{int(seconds % 1 * 1e6):06d}Z"


def http_messages(exchange: Exchange, kinds: tuple[str, ...], source: Source, host: str, path: str) -> list[bytes]:
    """Each event of the exchange as one HTTP/1.1 request in binary content mode: attributes as ce-
    headers, those the events share written once."""
    own = exchange_attributes(exchange)
    shared = source.headers + "".join(f"ce-{name}: {value}\r\n" for name, value in own.items())
    messages = []
    for kind in kinds:
        body, omitted = data(exchange, kind, source)
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nce-type: {TYPES[kind]}\r\n{shared}"
        if omitted:
            head += f"ce-dataomitted: {omitted}\r\n"
        if body is None:
            messages.append(f"{head}Content-Length: 0\r\n\r\n".encode("latin-1"))
        else:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            messages.append(head.encode("latin-1") + body)
    return messages


def json_line(exchange: Exchange, kind: str, source: Source) -> bytes:
    """The event in structured content mode, as one line of JSON (the file sink's format)."""
    body, omitted = data(exchange, kind, source)
    attrs = {"type": TYPES[kind], **source.attributes(), **exchange_attributes(exchange)}
    if omitted:
        attrs["dataomitted"] = omitted
    if body is None:
        return orjson.dumps(attrs, option=orjson.OPT_APPEND_NEWLINE)
    attrs["datacontenttype"] = "application/json"
    return orjson.dumps(attrs)[:-1] + b',"data":' + body + b"}\n"
