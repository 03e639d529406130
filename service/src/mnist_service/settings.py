"""Everything the service reads from the environment, read and validated in one place (README.md).

The app, gunicorn's configuration and the container healthcheck all take their values from
`Settings.from_env()`; a bad value is a ValueError whose message names the variable, which
`mnist-serve` prints as its one-line error.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mnist_artifact.options import parse_bool
from mnist_artifact.repository import S3Location, parse_location

from .keys import read_keys

WORKER_CLASSES = ("gevent", "sync", "gthread")  # gevent: process/worker.py; measured in bench/README.md
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAYLOAD_EVENTS = ("all", "request", "response")


@dataclass(frozen=True)
class Settings:
    model_dir: Path | S3Location = Path("models")  # a directory or s3://bucket/prefix
    model_cache_dir: Path = Path(tempfile.gettempdir()) / "mnist-model-cache"  # versions downloaded from a bucket
    model_name: str = "mnist"
    model_version: int | None = None  # pin one version; None serves the highest valid one
    model_poll_seconds: float = 10.0  # 0 turns polling off
    max_batch: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096  # a 12-megapixel phone photo fits; bombs do not
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    worker_class: str = "gevent"
    threads: int = 1  # gthread only
    worker_connections: int = 1000  # gevent: open connections per worker, idle ones included
    client_timeout: float = 10.0  # gevent: to send a whole request and read the answer
    keepalive: int = 0  # seconds a connection may wait idle for its next request; 0: one request per connection
    queue_timeout: float = 0.25  # gevent: shed an inference request that waited longer than this...
    queue_timeout_max: float = 1.0  # ...or than this while a crowd keeps every request waiting
    backlog: int = 8192  # connections the kernel may queue for accept() (capped by net.core.somaxconn)
    timeout: int = 30  # a worker silent this long is killed and replaced
    graceful_timeout: int = 30  # SIGTERM: in-flight requests get this long to finish
    grpc_port: int = 8081  # the Open Inference Protocol over gRPC (grpc/); 0 turns it off
    grpc_workers: int = 1  # gRPC server processes (bench/README.md, "gRPC")
    grpc_max_connection_idle: float = 300.0  # a gRPC connection without RPCs this long is closed
    grpc_max_connection_age: float = 600.0  # then clients reconnect: new pods get their share
    api_keys_file: Path | None = None  # set: every route but health, metrics and the page needs a key
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API; empty: same origin only
    payload_log_url: str | Path | S3Location | None = None  # http(s):// sink, directory or s3://; None: off
    payload_log_events: str = "all"  # all, request or response
    payload_log_sample_rate: float = 1.0  # share of requests logged, decided by request id
    payload_log_failed: bool = True  # log requests answered with an error too
    payload_log_data: bool = True  # False: metadata only, no inputs or outputs
    payload_log_max_event_bytes: int = 1024 * 1024  # an event's data over this is left out
    payload_log_queue_events: int = 10_000  # events a process may hold unsent...
    payload_log_queue_bytes: int = 64 * 1024 * 1024  # ...and bytes of payload they may hold
    payload_log_timeout: float = 2.0  # for the sink to answer
    payload_log_retries: int = 2  # further attempts of a failed delivery
    payload_log_batch_events: int = 1000  # files: events per file at most...
    payload_log_batch_seconds: float = 60.0  # ...and a file at least this often while events arrive
    payload_log_flush_seconds: float = 5.0  # at shutdown, to send what waits
    pod_namespace: str | None = None  # written into each event (ce-namespace); the chart sets it
    drift_window: int = 500  # recent instances per process and version scored for drift; 0: off

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        """Settings from environment variables; a bad value raises ValueError naming the variable."""
        default = cls()
        if environ.get("QUEUE_LIMIT", "").strip():
            raise ValueError("QUEUE_LIMIT is no longer read: requests are shed by how long they waited "
                             "(QUEUE_TIMEOUT, QUEUE_TIMEOUT_MAX)")
        return cls(
            model_dir=parse_location("MODEL_DIR", environ.get("MODEL_DIR") or str(default.model_dir)),
            model_cache_dir=Path(environ.get("MODEL_CACHE_DIR") or default.model_cache_dir),
            model_name=environ.get("MODEL_NAME") or default.model_name,
            model_version=_number(environ, "MODEL_VERSION", int, None, minimum=1),
            model_poll_seconds=_number(environ, "MODEL_POLL_SECONDS", float, default.model_poll_seconds, minimum=0),
            max_batch=_number(environ, "MAX_BATCH", int, default.max_batch, minimum=1),
            max_body_bytes=_number(environ, "MAX_BODY_BYTES", int, default.max_body_bytes, minimum=1),
            max_image_pixels=_number(environ, "MAX_IMAGE_PIXELS", int, default.max_image_pixels, minimum=1),
            log_level=_choice(environ, "LOG_LEVEL", LOG_LEVELS, default.log_level),
            host=environ.get("HOST") or default.host,
            port=_number(environ, "PORT", int, default.port, minimum=1, maximum=65535),
            workers=_number(environ, "WORKERS", int, default.workers, minimum=1),
            worker_class=_choice(environ, "WORKER_CLASS", WORKER_CLASSES, default.worker_class),
            threads=_number(environ, "THREADS", int, default.threads, minimum=1),
            worker_connections=_number(environ, "WORKER_CONNECTIONS", int, default.worker_connections, minimum=1),
            client_timeout=_number(environ, "CLIENT_TIMEOUT", float, default.client_timeout, minimum=0.1),
            keepalive=_number(environ, "KEEPALIVE", int, default.keepalive, minimum=0),
            queue_timeout=_number(environ, "QUEUE_TIMEOUT", float, default.queue_timeout, minimum=0.01),
            queue_timeout_max=_number(environ, "QUEUE_TIMEOUT_MAX", float, default.queue_timeout_max, minimum=0.01),
            backlog=_number(environ, "BACKLOG", int, default.backlog, minimum=1),
            timeout=_number(environ, "TIMEOUT", int, default.timeout, minimum=1),
            graceful_timeout=_number(environ, "GRACEFUL_TIMEOUT", int, default.graceful_timeout, minimum=1),
            grpc_port=_number(environ, "GRPC_PORT", int, default.grpc_port, minimum=0, maximum=65535),
            grpc_workers=_number(environ, "GRPC_WORKERS", int, default.grpc_workers, minimum=1),
            grpc_max_connection_idle=_number(environ, "GRPC_MAX_CONNECTION_IDLE", float,
                                             default.grpc_max_connection_idle, minimum=0.1),
            grpc_max_connection_age=_number(environ, "GRPC_MAX_CONNECTION_AGE", float,
                                            default.grpc_max_connection_age, minimum=0.1),
            api_keys_file=_keys_file(environ),
            cors_origins=_origins(environ),
            payload_log_url=_payload_location(environ),
            payload_log_events=_choice(environ, "PAYLOAD_LOG_EVENTS", PAYLOAD_EVENTS, default.payload_log_events),
            payload_log_sample_rate=_number(environ, "PAYLOAD_LOG_SAMPLE_RATE", float,
                                            default.payload_log_sample_rate, minimum=0, maximum=1),
            payload_log_failed=_flag(environ, "PAYLOAD_LOG_FAILED", default.payload_log_failed),
            payload_log_data=_flag(environ, "PAYLOAD_LOG_DATA", default.payload_log_data),
            payload_log_max_event_bytes=_number(environ, "PAYLOAD_LOG_MAX_EVENT_BYTES", int,
                                                default.payload_log_max_event_bytes, minimum=0),
            payload_log_queue_events=_number(environ, "PAYLOAD_LOG_QUEUE_EVENTS", int,
                                             default.payload_log_queue_events, minimum=1),
            payload_log_queue_bytes=_number(environ, "PAYLOAD_LOG_QUEUE_BYTES", int,
                                            default.payload_log_queue_bytes, minimum=1),
            payload_log_timeout=_number(environ, "PAYLOAD_LOG_TIMEOUT", float, default.payload_log_timeout,
                                        minimum=0.01),
            payload_log_retries=_number(environ, "PAYLOAD_LOG_RETRIES", int, default.payload_log_retries, minimum=0),
            payload_log_batch_events=_number(environ, "PAYLOAD_LOG_BATCH_EVENTS", int,
                                             default.payload_log_batch_events, minimum=1),
            payload_log_batch_seconds=_number(environ, "PAYLOAD_LOG_BATCH_SECONDS", float,
                                              default.payload_log_batch_seconds, minimum=0.1),
            payload_log_flush_seconds=_number(environ, "PAYLOAD_LOG_FLUSH_SECONDS", float,
                                              default.payload_log_flush_seconds, minimum=0),
            pod_namespace=environ.get("POD_NAMESPACE", "").strip() or None,
            drift_window=_number(environ, "DRIFT_WINDOW", int, default.drift_window, minimum=0),
        )._checked()

    def _checked(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"GRPC_PORT={self.grpc_port} is PORT's too: give gRPC its own port (or 0: none)")
        return self


def _number(environ, name: str, type_, default, *, minimum, maximum=None):
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = type_(text)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {type_.__name__}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name}={text!r} must be {bounds}")
    return value


def _choice(environ, name: str, choices: tuple[str, ...], default: str) -> str:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if text.upper() in choices:  # log levels are upper case, worker classes lower: either is accepted
        return text.upper()
    if text.lower() in choices:
        return text.lower()
    raise ValueError(f"{name}={text!r} must be one of {', '.join(choices)}")


def _flag(environ, name: str, default: bool) -> bool:
    text = environ.get(name, "").strip()
    try:
        return parse_bool(name, text) if text else default
    except ValueError:
        raise ValueError(f"{name}={text!r} must be true or false") from None


def _payload_location(environ) -> str | Path | S3Location | None:
    """PAYLOAD_LOG_URL: an http(s):// CloudEvents sink, or where JSON Lines files go (a directory,
    file:///dir or s3://bucket/prefix); None when unset."""
    text = environ.get("PAYLOAD_LOG_URL", "").strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"PAYLOAD_LOG_URL={text!r} has no host")
        return text
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme and parts.scheme != "s3":
        raise ValueError(f"PAYLOAD_LOG_URL={text!r}: unsupported scheme {parts.scheme!r}; use http(s):// for a "
                         "CloudEvents sink, or a directory or s3://bucket/prefix for JSON Lines files")
    return parse_location("PAYLOAD_LOG_URL", text)


ORIGIN = re.compile(r"https?://[^/\s]+")


def _keys_file(environ) -> Path | None:
    text = environ.get("API_KEYS_FILE", "").strip()
    if not text:
        return None
    read_keys(Path(text))  # the file must hold at least one key now, not at the first request
    return Path(text)


def _origins(environ) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in environ.get("CORS_ORIGINS", "").split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not ORIGIN.fullmatch(origin):
            raise ValueError(f"CORS_ORIGINS: {origin!r} is not an origin like https://example.com:8443 (or *)")
    return origins
