"""Every error is JSON: {"error": {"code", "message", "details"}} with a 4xx/5xx status."""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

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


def answer_error(start_response, path: str, status: int, code: str, message: str, headers=()) -> list[bytes]:
    """Answer an error from WSGI middleware that runs before any route (API keys, CORS)."""
    body = error_body_for(path, code, message)
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), *headers, ("Content-Length", str(len(body)))])
    return [body]


# werkzeug's exceptions, under the codes clients see.
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
              415: "unsupported_media_type"}


def http_error(e: HTTPException, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    """The JSON body and extra headers for one of werkzeug's exceptions (404, 405, 413, ...)."""
    message = {413: "request body is larger than MAX_BODY_BYTES"}.get(e.code, e.description)
    body = error_body_for(path, HTTP_CODES.get(e.code, "http_error"), message)
    allow = [("Allow", ", ".join(e.valid_methods))] if e.code == 405 and getattr(e, "valid_methods", None) else []
    return body, allow


def internal_error() -> bytes:
    """Logs the exception being handled; the body tells the client nothing about it."""
    log.exception("unhandled error")
    return error_body("internal_error", "internal server error")


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        body = error_body_for(request.path, e.code, e.message, e.details)
        return Response(body, status=e.status, mimetype="application/json")

    @app.errorhandler(HTTPException)
    def werkzeug_error(e: HTTPException):
        body, headers = http_error(e, request.path)
        return Response(body, status=e.code, headers=headers, mimetype="application/json")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        return Response(internal_error(), status=500, mimetype="application/json")


class ClientTimeout(BaseException):
    """A client took longer than CLIENT_TIMEOUT to send its request or to read the answer (worker.py).

    A BaseException, as gevent's own Timeout: no `except Exception` on the way may mistake it for
    a server error and answer it; the worker closes the connection."""
