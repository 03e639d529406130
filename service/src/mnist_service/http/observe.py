"""The outermost middleware: a request id, metrics and one access line for every HTTP request
(access.py), whichever layer answers it: a middleware, the router or Flask. Layers tell it what
they know through the WSGI environ (`access.note(environ, route=..., ...)`)."""

from __future__ import annotations

import time

from .. import access, metrics
from ..errors import ClientTimeout
from ..payloads import PayloadLog


class ObservedRequests:
    """`payloads`: the payload log, given each request to `logged_routes` (the inference routes)."""

    def __init__(self, app, payloads: PayloadLog | None = None, logged_routes: frozenset[str] = frozenset()):
        self.app, self.payloads, self.logged_routes = app, payloads, logged_routes

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
            status = int(statuses[-1][:3]) if statuses else 500
            access.record(environ, request_id=request_id, protocol="http", method=environ["REQUEST_METHOD"],
                          status=status, seconds=seconds)
            if self.payloads is not None and (notes := access.notes_of(environ)).get("route") in self.logged_routes:
                self.payloads.record(notes, request_id=request_id, protocol="http", status=status,
                                     failed=status >= 400, seconds=seconds)
