"""How the HTTP side writes its answers: JSON, and errors in the form of the protocol a path belongs
to (errors.error_body_for), from WSGI middleware, the router, and Flask's error handlers."""

from __future__ import annotations

from http import HTTPStatus

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiError, error_body_for, internal_error

JSON_HEADER = ("Content-Type", "application/json")
# werkzeug's exceptions, under the codes clients see.
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
              415: "unsupported_media_type"}


def answer(start_response, status: int, body: bytes, headers: list[tuple[str, str]]) -> list[bytes]:
    """A whole WSGI answer, with its Content-Length."""
    start_response(f"{status} {HTTPStatus(status).phrase}", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def answer_error(start_response, path: str, status: int, code: str, message: str, headers=()) -> list[bytes]:
    """Answer an error from WSGI middleware that runs before any route (API keys, CORS)."""
    return answer(start_response, status, error_body_for(path, code, message), [JSON_HEADER, *headers])


def http_error(e: HTTPException, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    """The JSON body and extra headers for one of werkzeug's exceptions (404, 405, 413, ...)."""
    message = {413: "request body is larger than MAX_BODY_BYTES"}.get(e.code, e.description)
    body = error_body_for(path, HTTP_CODES.get(e.code, "http_error"), message)
    allow = [("Allow", ", ".join(e.valid_methods))] if e.code == 405 and getattr(e, "valid_methods", None) else []
    return body, allow


def register_error_handlers(app: Flask) -> None:
    """The same JSON errors for the control plane's Flask views."""

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
