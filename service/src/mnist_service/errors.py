"""Every error is JSON: {"error": {"code", "message", "details"}} with a 4xx/5xx status (gRPC: its
status code, grpc/observe.py). Transport-free: Flask's handlers are in http/responses.py."""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_body(code: str, message: str, details=None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": details}})


def error_body_for(path: str, code: str, message: str, details=None) -> bytes:
    """The error body in the form of the protocol `path` belongs to: the Open Inference Protocol's
    routes (/v2...) answer {"error": "<message>"}, every other route error_body's form."""
    if path == "/v2" or path.startswith("/v2/"):
        return orjson.dumps({"error": message})
    return error_body(code, message, details)


def internal_error() -> bytes:
    """Logs the exception being handled; the body tells the client nothing about it."""
    log.exception("unhandled error")
    return error_body("internal_error", "internal server error")


class ClientTimeout(BaseException):
    """A client took longer than CLIENT_TIMEOUT to send its request or to read the answer
    (process/worker.py).

    A BaseException, as gevent's own Timeout: no `except Exception` on the way may mistake it for
    a server error and answer it; the worker closes the connection."""
