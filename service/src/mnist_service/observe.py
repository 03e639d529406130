"""Request id, metrics and one JSON access line for every request (never the payload).

A WSGI middleware around the whole app rather than Flask hooks: POST /v1/predict is answered
before Flask's request cycle (predict.py) and must be observed exactly like every other route.
Handlers tell it what they know through the WSGI environ: `note(environ, route=..., ...)`.
"""

from __future__ import annotations

import os
import re
import time

from . import logs, metrics
from .errors import ClientTimeout

REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}")  # a caller's id is echoed only if it is this tame
NOTES = "mnist.access"  # environ key: the access line's fields a handler adds


def make_request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is tame, else a new one."""
    return given if given and REQUEST_ID.fullmatch(given) else os.urandom(16).hex()


def note(environ: dict, **fields) -> None:
    """Add fields (route, batch_size, model_version, model_label) to this request's access line and metrics."""
    environ.setdefault(NOTES, {}).update(fields)


class ObservedRequests:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = make_request_id(environ.get("HTTP_X_REQUEST_ID"))
        statuses = []

        def start(status: str, headers: list, exc_info=None):
            statuses.append(status)
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        metrics.IN_FLIGHT.inc()
        try:
            return self.app(environ, start)
        except ClientTimeout:  # the client stopped sending its body: recorded as 408 Request Timeout
            statuses.append("408")
            raise
        finally:  # WSGI apps call start_response before they return: the status is known here
            latency = time.perf_counter() - started
            metrics.IN_FLIGHT.dec()
            status = int(statuses[-1][:3]) if statuses else 500
            fields = environ.get(NOTES, {})
            route = fields.get("route", "unmatched")
            version = fields.get("model_version")
            metrics.observe_request(route, environ["REQUEST_METHOD"], status, latency,
                                    "" if version is None else str(version))
            logs.access(request_id=request_id, protocol="http", method=environ["REQUEST_METHOD"], route=route,
                        status=status, latency_ms=round(latency * 1000, 3), batch_size=fields.get("batch_size"),
                        model_version=version, model_label=fields.get("model_label"))
