"""`mnist-serve`: run the service: gunicorn (HTTP, PORT) with the repository's configuration, and
the gRPC server (GRPC_PORT, unless 0) beside it under one supervisor (supervisor.py).

Extra arguments go to gunicorn (e.g. `mnist-serve --workers 4`). Settings: environment variables
(README.md). Exits 2 with a one-line message when a setting is invalid.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .. import logs
from ..settings import Settings
from .supervisor import Supervisor, clear_metrics


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()  # fail here, in one line, rather than in every worker
    except ValueError as e:
        print(f"mnist-serve: {e}", file=sys.stderr)
        return 2
    # prometheus_client picks multiprocess mode at import, from the environment of the process
    # that imports it: so the variable is set here, before gunicorn (and its workers) start.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-serve-metrics-")
    # It must exist before gunicorn loads the worker class, which imports the metrics; its files of
    # an earlier run would corrupt the totals.
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    clear_metrics(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # The workers are the parallelism: one BLAS thread each. With OpenBLAS's default (a thread per
    # core in every worker) batch-8 requests ran 25x slower on 2 cores (docs/reliability.md).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    command = [sys.executable, "-m", "gunicorn", "-c", "python:mnist_service.process.gunicorn_config", *argv,
               "mnist_service.http.app:create_app()"]
    if not settings.grpc_port:  # HTTP alone: gunicorn is the service
        os.execv(sys.executable, command)
    logs.configure(settings.log_level)
    return Supervisor(settings, command).run()


if __name__ == "__main__":
    sys.exit(main())
