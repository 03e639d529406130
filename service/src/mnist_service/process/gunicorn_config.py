"""gunicorn settings for mnist-serve (`gunicorn -c python:mnist_service.process.gunicorn_config ...`).

Values come from the service's one Settings object (settings.py: HOST, PORT, WORKERS, WORKER_CLASS,
THREADS, WORKER_CONNECTIONS, BACKLOG, KEEPALIVE, TIMEOUT, GRACEFUL_TIMEOUT; worker.py reads CLIENT_TIMEOUT,
QUEUE_TIMEOUT and QUEUE_TIMEOUT_MAX). PROMETHEUS_MULTIPROC_DIR must already be set in the
environment gunicorn starts with (mnist-serve sets it).
"""

import os
import sys

from gunicorn.glogging import Logger

from mnist_service.logs import JsonFormatter
from mnist_service.settings import Settings

try:
    _settings = Settings.from_env()
except ValueError as e:  # gunicorn run by hand with this file: the same one line as mnist-serve
    sys.exit(f"mnist-serve: {e}")

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = {"gevent": "mnist_service.process.worker.Worker"}.get(_settings.worker_class, _settings.worker_class)
threads = _settings.threads
worker_connections = _settings.worker_connections
backlog = _settings.backlog
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
# KEEPALIVE: 0 (the default) is one request per connection. Kept-alive connections cost a gevent
# worker less per request (bench/README.md, "Service"); the worker serves them in turn and bounds each
# request by CLIENT_TIMEOUT (worker.py). Not the default: kept alive, 64 connections of mixed PNG and
# JSON requests on 2 workers had 0.2-0.3 % of them shed past QUEUE_TIMEOUT (tests/reliability).
keepalive = _settings.keepalive
# The worker heartbeat file on a disk-backed /tmp can stall workers (gunicorn FAQ); /dev/shm is
# RAM and also works with a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None  # the app logs one JSON line per request itself
# gunicorn's control socket (gunicornc) would write under $HOME: not wanted on a read-only root
# filesystem, and nothing here uses it.
control_socket_disable = True
# JSON error log, no gunicorn access log: even unprinted, its formatting costs ~70 us a request.
logger_class = "mnist_service.process.gunicorn_config.GunicornLogger"


def on_starting(server):
    # mnist-serve sets the directory and empties it before any process of the service starts.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one worker at a time")


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """Send what the payload log holds, for up to PAYLOAD_LOG_FLUSH_SECONDS, as the worker leaves."""
    payload_log = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("payload_log")
    if payload_log is not None:
        payload_log.close(_settings.payload_log_flush_seconds)


class GunicornLogger(Logger):
    """gunicorn's own log lines as JSON; no gunicorn access log (the app writes its own: access.py)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        pass
