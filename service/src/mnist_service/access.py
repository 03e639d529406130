"""What every request leaves behind, over HTTP or gRPC: an id, metrics and one JSON access line.

Handlers tell what they learned (route, batch size, the version that answered) with `note`, into
the request's WSGI environ or the RPC's notes dict; the transport's outermost layer
(http/observe.py, grpc/observe.py) calls `record` once the status is known. Never the payload.
"""

from __future__ import annotations

import logging
import os
import re
import time

import orjson

from . import metrics

REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}")  # a caller's id is echoed only if it is this tame
NOTES = "mnist.access"  # the key of a request's notes in its environ (or an RPC's notes dict)
ACCESS = logging.getLogger(__name__)


def make_request_id(given: str | None) -> str:
    """The caller's X-Request-ID (or x-request-id metadata) when it is tame, else a new one."""
    return given if given and REQUEST_ID.fullmatch(given) else os.urandom(16).hex()


def note(carrier: dict, **fields) -> None:
    """Add fields (route, batch_size, model_version, model_label, ...) to this request's record."""
    carrier.setdefault(NOTES, {}).update(fields)


def notes_of(carrier: dict) -> dict:
    return carrier.get(NOTES, {})


def record(carrier: dict, *, request_id: str, protocol: str, method: str, status: int | str, seconds: float) -> None:
    """Count and time the request (metrics.observe_request) and write its access line."""
    fields = notes_of(carrier)
    route = fields.get("route", "unmatched")
    version = fields.get("model_version")
    metrics.observe_request(route, method, status, seconds, "" if version is None else str(version), protocol)
    if ACCESS.isEnabledFor(logging.INFO):
        _write_line(request_id=request_id, protocol=protocol, method=method, route=route, status=status,
                    latency_ms=round(seconds * 1000, 3), batch_size=fields.get("batch_size"),
                    model_version=version, model_label=fields.get("model_label"))


def _write_line(**fields) -> None:
    """Straight to stderr, not through logging's records, handler locks and formatting: they cost
    more than the rest of a request's bookkeeping. The fields and format are logs.JsonFormatter's."""
    now = time.time()
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
             "level": "info", "logger": ACCESS.name, "pid": os.getpid(), "message": "request", **fields}
    os.write(2, orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))  # one write: lines never interleave
