"""gunicorn settings for mnist-serve (`gunicorn -c python:mnist_service.gunicorn_config ...`).

Environment: PORT, HOST, WORKERS (default: the number of cores), WORKER_CLASS, THREADS, TIMEOUT,
PROMETHEUS_MULTIPROC_DIR (must already be set in the environment gunicorn starts with).
"""

import os
from pathlib import Path

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS") or os.cpu_count() or 2)
worker_class = os.environ.get("WORKER_CLASS", "sync")  # measured against gthread in bench/README.md
threads = int(os.environ.get("THREADS", "1"))
timeout = int(os.environ.get("TIMEOUT", "30"))
graceful_timeout = 30  # SIGTERM: in-flight requests get this long to finish
keepalive = 5
# The worker heartbeat file on a disk-backed /tmp can stall workers (gunicorn FAQ); /dev/shm is
# RAM and also works with a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None  # the app logs one JSON line per request itself
# gunicorn's control socket (gunicornc) would write under $HOME: not wanted on a read-only root
# filesystem, and nothing here uses it.
control_socket_disable = True
# JSON error log, no gunicorn access log: even unprinted, its formatting costs ~70 us a request.
logger_class = "mnist_service.logs.GunicornLogger"


def on_starting(server):
    """Start metrics from zero: stale files of an earlier run would corrupt the totals."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one worker at a time")
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stale in Path(directory).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
