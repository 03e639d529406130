"""The Open Inference Protocol over gRPC (GRPC_PORT): `inference.GRPCInferenceService`, the standard
health service and server reflection, in a process of its own that `mnist-serve` starts beside
gunicorn and watches (supervisor.py).

Its own process because grpc core does not survive fork() (every gRPC object here is made after
this process was exec'd) and because grpc.aio cannot run under gevent's patches (bench/README.md,
"gRPC", compares the process models). grpc.aio rather than the thread-pool server: there a message
is received by the pool thread that will run the RPC, so a client that sends slowly holds a thread;
here receiving costs nothing until the message is whole, and RPCs run one at a time on the event
loop, as requests do in a gevent worker. It serves the same models (its own ModelStore, polling
MODEL_DIR like each gunicorn worker), the same keys and the same answers as the REST path:
inference.py picks and runs the model, codec_grpc.py speaks the messages. Every unary RPC is counted
and timed in the same metrics (protocol="grpc"), in the same multiprocess directory, and logged in
one access line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from contextvars import ContextVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import codec_grpc, codec_v2, logs, metrics, observe
from .auth import ApiKeys, presented_key
from .errors import ApiError
from .inference import check_name, pick_model, run_model
from .options import Limits
from .overload import Admission
from .proto import grpc_predict_v2_pb2 as pb
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc
from .settings import Settings
from .store import ModelStore, open_store

log = logging.getLogger("mnist_service.grpc_server")  # not __name__: run as `python -m`, that is __main__

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METHOD_PREFIX = f"/{SERVICE}/"
INFER = f"{METHOD_PREFIX}ModelInfer"
OPEN_METHODS = frozenset(f"{METHOD_PREFIX}{m}" for m in ("ServerLive", "ServerReady", "ServerMetadata"))
# Health service names (Kubernetes' grpc probes name one): "" and the inference service answer
# readiness as the REST path's /v2/health/ready does; liveness is SERVING while the process serves.
LIVENESS, READINESS = "liveness", "readiness"
READY_NAMES = ("", SERVICE, READINESS)
STATUS_CODES = {  # the REST path's HTTP statuses (ApiError.status) as gRPC status codes
    400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
READINESS_CHECK_SECONDS = 0.5
KEEPALIVE_SECONDS = 60  # ping a connection idle this long; close it when the ping is not answered...
KEEPALIVE_TIMEOUT_SECONDS = 20  # ...within this
CLIENT_PINGS_SECONDS = 10  # clients may ping this often (gRPC's default, 5 minutes, disconnects many)

_notes: ContextVar[dict] = ContextVar("rpc_notes")  # the current RPC's access-line fields (observe.note)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs, answered as the REST path answers them (control.py, routes.infer)."""

    def __init__(self, store: ModelStore, limits: Limits):
        self.store, self.limits = store, limits

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.store.current is not None)

    async def ServerMetadata(self, request, context):
        server = codec_v2.SERVER
        return pb.ServerMetadataResponse(name=server["name"], version=server["version"],
                                         extensions=server["extensions"])

    async def ModelReady(self, request, context):
        try:
            pick_model(self.store, request.name, request.version or None)
        except ApiError as e:
            if e.status != 503:  # another model, a missing version: NOT_FOUND
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        if request.version:
            pick_model(self.store, request.name, request.version)
        else:
            check_name(self.store, request.name)  # metadata describes the interface: no model needed
        return codec_grpc.model_metadata(self.store.name, self.store.versions())

    async def ModelInfer(self, request, context):
        metadata = dict(context.invocation_metadata())
        label = metadata.get("x-model-label")
        if label is not None and request.model_version:
            raise ApiError(400, "invalid_request", "ask for a model_version or an x-model-label, not both")
        picked = pick_model(self.store, request.model_name, request.model_version or None, label,
                            metadata.get("x-client-id"))
        notes = _notes.get()
        observe.note(notes, model_version=picked.model.version, model_label=picked.label,
                     metadata=[(name.lower(), value) for name, value in picked.headers()])
        pixels = codec_grpc.decode_pixels(request, self.limits)
        outputs = codec_grpc.requested_outputs(request)
        probabilities = run_model(picked, pixels, notes)
        return codec_grpc.encode_response(picked.model, request, outputs, probabilities)


class EventLoopLag:
    """How late the event loop runs what is ready: a timer's delay past its due time, measured
    every INTERVAL. RPCs waiting their turn wait about this long."""

    INTERVAL = 0.01

    def __init__(self):
        self.seconds = 0.0

    async def measure(self) -> None:
        while True:
            due = time.perf_counter() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            self.seconds = max(time.perf_counter() - due, 0.0)


class ObservedRpcs(grpc.aio.ServerInterceptor):
    """Request id, API keys, shedding, deadlines, metrics and one access line for every unary RPC.

    Under overload the RPCs wait on the event loop, each behind the work of those before it, and the
    wait is the loop's lag (EventLoopLag). While it is longer than QUEUE_TIMEOUT (QUEUE_TIMEOUT_MAX
    under a crowd: overload.Admission, as HTTP sheds) an inference RPC is answered RESOURCE_EXHAUSTED
    at once.
    """

    def __init__(self, keys: ApiKeys | None, admission: Admission, lag: EventLoopLag):
        self.keys, self.admission, self.lag = keys, admission, lag

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:  # unknown methods; reflection and Watch stream
            return handler
        observed = functools.partial(self._observe, handler.unary_unary, details.method)
        return grpc.unary_unary_rpc_method_handler(observed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    async def _observe(self, behaviour, method: str, request, context):
        arrived = time.perf_counter()
        metadata = dict(context.invocation_metadata())
        request_id = observe.make_request_id(metadata.get("x-request-id"))
        notes: dict = {}
        token = _notes.set(notes)
        code, message, response = grpc.StatusCode.OK, "", None
        metrics.IN_FLIGHT.inc()
        try:
            self._admit(method, metadata, context)
            response = await behaviour(request, context)
        except ApiError as e:
            code, message = STATUS_CODES.get(e.status, grpc.StatusCode.UNKNOWN), e.message
        except Exception:
            log.exception("unhandled error", extra={"route": method, "request_id": request_id})
            code, message = grpc.StatusCode.INTERNAL, "internal server error"
        finally:
            _notes.reset(token)
            latency = time.perf_counter() - arrived
            metrics.IN_FLIGHT.dec()
            fields = notes.get(observe.NOTES, {})
            version = fields.get("model_version")
            metrics.observe_request(method, "POST", code.name, latency, "" if version is None else str(version),
                                    protocol="grpc")
            logs.access(request_id=request_id, protocol="grpc", method="POST", route=method, status=code.name,
                        latency_ms=round(latency * 1000, 3), batch_size=fields.get("batch_size"),
                        model_version=version, model_label=fields.get("model_label"))
        # With the status, not as initial metadata: that is one more operation of grpc core per RPC
        # (12-16 % of a one-image RPC, bench/README.md).
        context.set_trailing_metadata([("x-request-id", request_id), *fields.get("metadata", [])])
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    def _admit(self, method: str, metadata: dict, context) -> None:
        """Refuse the RPC (ApiError) without a valid key, when it queued too long, or past its deadline."""
        if self.keys is not None and method.startswith(METHOD_PREFIX) and method not in OPEN_METHODS:
            key = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
            if key is None or not self.keys.valid(key):
                reason = "missing" if key is None else "invalid"
                metrics.AUTH_FAILURES.labels(method, reason).inc()
                log.warning("refused an RPC without a valid API key", extra={"route": method, "reason": reason})
                raise ApiError(401, "unauthorized", f"{reason} API key: send the metadata "
                               "authorization: Bearer <key> or x-api-key: <key>")
        if method != INFER:
            return
        if not self.admission.on_time(self.lag.seconds):
            metrics.SHED.labels(method).inc()
            raise ApiError(429, "overloaded", "the server is overloaded: retry later")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise ApiError(504, "deadline_exceeded", "the deadline passed before the RPC could start")


def server_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    """grpc core's channel arguments: message size, connection limits, and the port's sharing."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # Off with one process: a second server on the port then fails to bind instead of silently
        # taking half of its connections. On with several, which mnist-serve starts on a free port.
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.server_handshake_timeout_ms", ms(settings.client_timeout)),  # a connection that says nothing
        ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle)),
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.graceful_timeout)),  # in-flight RPCs may finish
        ("grpc.keepalive_time_ms", ms(KEEPALIVE_SECONDS)),
        ("grpc.keepalive_timeout_ms", ms(KEEPALIVE_TIMEOUT_SECONDS)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(CLIENT_PINGS_SECONDS)),
    ]


def build_server(settings: Settings, store: ModelStore,
                 lag: EventLoopLag) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with every service added, not yet started (in the event loop that will run it)."""
    keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file else None
    admission = Admission(settings.queue_timeout, settings.queue_timeout_max)
    server = grpc.aio.server(interceptors=[ObservedRpcs(keys, admission, lag)],
                             options=server_options(settings, reuse_port=settings.grpc_workers > 1))
    limits = Limits(max_batch=settings.max_batch, max_image_pixels=settings.max_image_pixels)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(store, limits), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")  # RuntimeError when it cannot bind
    return server, health_servicer


async def watch_readiness(store: ModelStore, health_servicer: health.aio.HealthServicer) -> None:
    """Keep the health statuses in step with the store: ready once a model serves."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set(LIVENESS, serving)
    while True:
        status = serving if store.current is not None else not_serving
        for name in READY_NAMES:
            await health_servicer.set(name, status)
        await asyncio.sleep(READINESS_CHECK_SECONDS)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain: no new RPCs, GRACEFUL_TIMEOUT for those in flight.
    SIGHUP re-reads the model repository now."""
    store = open_store(settings)
    lag = EventLoopLag()
    server, health_servicer = build_server(settings, store, lag)
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, store.refresh))
    await server.start()
    tasks = [asyncio.create_task(watch_readiness(store, health_servicer)), asyncio.create_task(lag.measure())]
    log.info("gRPC server ready", extra={"port": settings.grpc_port,
                                         "version": store.current.version if store.current else None})
    await stop.wait()
    log.info("gRPC server draining", extra={"graceful_timeout": settings.graceful_timeout})
    for task in tasks:
        task.cancel()
    await health_servicer.enter_graceful_shutdown()  # probes see NOT_SERVING while the RPCs in flight finish
    await server.stop(grace=settings.graceful_timeout)
    log.info("gRPC server stopped")


def main() -> int:
    settings = Settings.from_env()  # mnist-serve checked it already
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except RuntimeError as e:  # grpc: "Failed to bind to address ..."
        log.error("gRPC server cannot start", extra={"port": settings.grpc_port, "reason": str(e)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
