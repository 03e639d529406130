"""The data plane: inference routes answered as plain WSGI handlers in front of Flask.

Flask's request cycle (contexts, routing, hooks, Response objects) costs more per request than
everything this service adds (bench/README.md, "Service"), so the routes of routes.ROUTES are
matched here and every other request goes on to the Flask app (the control plane). werkzeug's
Request parses a request as Flask's would; errors have the JSON form Flask's handlers give them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Request

from . import errors, observe
from .options import Limits
from .store import ModelStore

JSON_HEADER = ("Content-Type", "application/json")


@dataclass(frozen=True)
class Context:
    """What every handler may use besides its request."""

    store: ModelStore
    limits: Limits


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


class DataPlane:
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
        observe.note(environ, route=route.rule)
        try:
            if environ["REQUEST_METHOD"] != "POST":
                raise MethodNotAllowed(["POST"])
            req = Request(environ)
            req.max_content_length = self.max_body_bytes
            status, (body, headers) = 200, route.handler(req, self.context, **parameters)
        except errors.ApiError as e:
            status, body, headers = e.status, errors.error_body_for(path, e.code, e.message, e.details), [JSON_HEADER]
        except HTTPException as e:  # 405, and 413 from werkzeug's body limit
            status, (body, extra) = e.code, errors.http_error(e, path)
            headers = [JSON_HEADER, *extra]
        except Exception:
            status, body, headers = 500, errors.internal_error(), [JSON_HEADER]
        start_response(f"{status} {HTTPStatus(status).phrase}", [*headers, ("Content-Length", str(len(body)))])
        return [body]
