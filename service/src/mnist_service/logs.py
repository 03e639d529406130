"""Structured logs: one JSON object per line on stderr, extra fields included."""

from __future__ import annotations

import logging
import os
import time

import orjson
from gunicorn.glogging import Logger

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
                 "message": record.getMessage()}
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def access(**fields) -> None:
    """One JSON line per request, at INFO. Written straight to stderr: the logging machinery
    (records, handler locks, formatting) cost more than the rest of a request's bookkeeping."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    now = time.time()
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
             "level": "info", "logger": ACCESS.name, "pid": os.getpid(), "message": "request", **fields}
    os.write(2, orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))  # one write: lines never interleave


ACCESS = logging.getLogger("mnist_service.access")


class GunicornLogger(Logger):
    """gunicorn's own log lines as JSON; no gunicorn access log (the app writes its own)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        pass
