"""The router: inference routes (routes.ROUTES) answered as plain WSGI handlers in front of Flask.

Flask's request cycle (contexts, routing, hooks, Response objects) costs more per request than
everything this service adds (bench/README.md, "Service"), so the inference routes are matched here
and every other request goes on to the Flask app (the control plane: control.py, page.py).
werkzeug's Request (request.py) parses a request as Flask's would; errors have the JSON form Flask's handlers
give them (responses.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .. import access
from ..dataplane.drift import DriftMonitor
from ..dataplane.options import Limits
from ..dataplane.store import ModelStore
from ..errors import ApiError, error_body_for, internal_error
from .request import InferenceRequest
from .responses import JSON_HEADER, answer, http_error


@dataclass(frozen=True)
class Context:
    """What every handler may use besides its request."""

    store: ModelStore
    limits: Limits
    drift: DriftMonitor


@dataclass(frozen=True)
class Route:
    rule: str  # the route's name in metrics and access lines, as Flask writes rules
    match: Callable[[str], dict | None]  # path -> the parameters it names, or None
    handler: Callable[..., tuple[bytes, list[tuple[str, str]]]]  # (req, context, **parameters) -> body, headers


def match_route(routes: list[Route], path: str) -> tuple[Route, dict] | None:
    """The first route of `routes` that matches `path`, with the parameters it names."""
    for route in routes:
        parameters = route.match(path)
        if parameters is not None:
            return route, parameters
    return None


class Router:
    """Answers the paths of `routes` (POST only) and hands every other request to `fallback`."""

    def __init__(self, routes: list[Route], fallback, context: Context, max_body_bytes: int):
        self.routes, self.fallback, self.context, self.max_body_bytes = routes, fallback, context, max_body_bytes

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        matched = match_route(self.routes, path)
        if matched is None:
            return self.fallback(environ, start_response)
        return self._answer(*matched, path, environ, start_response)

    def _answer(self, route: Route, parameters: dict, path: str, environ, start_response):
        access.note(environ, route=route.rule)
        try:
            if environ["REQUEST_METHOD"] != "POST":
                raise MethodNotAllowed(["POST"])
            req = InferenceRequest(environ)
            req.max_content_length = self.max_body_bytes
            status, (body, headers) = 200, route.handler(req, self.context, **parameters)
        except ApiError as e:
            status, body, headers = e.status, error_body_for(path, e.code, e.message, e.details), [JSON_HEADER]
            access.note(environ, error=e.message)
        except HTTPException as e:  # 405, and 413 from werkzeug's body limit
            status, (body, extra) = e.code, http_error(e, path)
            headers = [JSON_HEADER, *extra]
            access.note(environ, error=e.description)
        except Exception:
            status, body, headers = 500, internal_error(), [JSON_HEADER]
        return answer(start_response, status, body, headers)
