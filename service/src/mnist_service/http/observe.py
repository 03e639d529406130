"""The outermost middleware: a request id, metrics and one access line for every HTTP request
(access.py), whichever layer answers it: a middleware, the router or Flask. Layers tell it what
they know through the WSGI environ (`access.note(environ, route=..., ...)`)."""

from __future__ import annotations

import time

from .. import access, metrics
from ..errors import ClientTimeout


class ObservedRequests:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = access.make_request_id(environ.get("HTTP_X_REQUEST_ID"))
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
            seconds = time.perf_counter() - started
            metrics.IN_FLIGHT.dec()
            access.record(environ, request_id=request_id, protocol="http", method=environ["REQUEST_METHOD"],
                          status=int(statuses[-1][:3]) if statuses else 500, seconds=seconds)
