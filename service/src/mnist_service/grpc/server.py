"""The Open Inference Protocol over gRPC (GRPC_PORT): `inference.GRPCInferenceService`, the standard
health service and server reflection, in a process of its own that `mnist-serve` starts beside
gunicorn and watches (process/supervisor.py).

Its own process because grpc core does not survive fork() (every gRPC object here is made after
this process was exec'd) and because grpc.aio cannot run under gevent's patches (bench/README.md,
"gRPC", compares the process models). grpc.aio rather than the thread-pool server: there a message
is received by the pool thread that will run the RPC, so a client that sends slowly holds a thread;
here receiving costs nothing until the message is whole, and RPCs run one at a time on the event
loop, as requests do in a gevent worker. It serves the same models (its own ModelStore, polling
MODEL_DIR like each gunicorn worker), the same keys and the same answers as the REST path:
servicer.py answers through the data plane, codec.py speaks the messages, observe.py records
every unary RPC in the same metrics (protocol="grpc"), in the same multiprocess directory, and in
one access line. This module builds the server and runs the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .. import logs
from ..admission import Admission
from ..dataplane.drift import DriftMonitor
from ..dataplane.options import Limits
from ..dataplane.store import ModelStore, open_store
from ..keys import ApiKeys
from ..payloads import PayloadLog, open_payload_log
from ..settings import Settings
from .lag import EventLoopLag
from .observe import ObservedRpcs
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc
from .servicer import SERVICE, InferenceServicer

log = logging.getLogger("mnist_service.grpc.server")  # not __name__: run as `python -m`, that is __main__

# Health service names (Kubernetes' grpc probes name one): "" and the inference service answer
# readiness as the REST path's /v2/health/ready does; liveness is SERVING while the process serves.
LIVENESS, READINESS = "liveness", "readiness"
READY_NAMES = ("", SERVICE, READINESS)
READINESS_CHECK_SECONDS = 0.5
KEEPALIVE_SECONDS = 60  # ping a connection idle this long; close it when the ping is not answered...
KEEPALIVE_TIMEOUT_SECONDS = 20  # ...within this
CLIENT_PINGS_SECONDS = 10  # clients may ping this often (gRPC's default, 5 minutes, disconnects many)


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


def build_server(settings: Settings, store: ModelStore, lag: EventLoopLag,
                 payloads: PayloadLog | None = None) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with every service added, not yet started (in the event loop that will run it)."""
    keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file else None
    admission = Admission(settings.queue_timeout, settings.queue_timeout_max)
    server = grpc.aio.server(options=server_options(settings, reuse_port=settings.grpc_workers > 1))
    observed = ObservedRpcs(server, keys, admission, lag, payloads)  # every unary method of these services
    servicer = InferenceServicer(store, Limits.of(settings), DriftMonitor(settings.drift_window))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, observed)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, observed)
    # A stream, which observe.py leaves alone; and reflection picks its servicer by the server's class.
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
    payloads = open_payload_log(settings)
    server, health_servicer = build_server(settings, store, lag, payloads)
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
    if payloads is not None:  # the RPCs are done: send what they left, for up to PAYLOAD_LOG_FLUSH_SECONDS
        await asyncio.to_thread(payloads.close, settings.payload_log_flush_seconds)
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
