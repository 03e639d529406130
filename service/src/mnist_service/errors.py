"""Every error is JSON: {"error": {"code", "message", "details"}} with a 4xx/5xx status."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(status: int, code: str, message: str, details=None) -> Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


# werkzeug's exceptions, under the codes clients see.
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
              415: "unsupported_media_type"}


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return error_response(e.status, e.code, e.message, e.details)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        code = HTTP_CODES.get(e.code, "http_error")
        message = {413: "request body is larger than MAX_BODY_BYTES"}.get(e.code, e.description)
        if request.path == "/v2" or request.path.startswith("/v2/"):  # the Open Inference Protocol's form
            response = Response(orjson.dumps({"error": message}), status=e.code, mimetype="application/json")
        else:
            response = error_response(e.code, code, message)
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
