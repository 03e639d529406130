"""API keys for HTTP (API_KEYS_FILE, keys.py): every route but health, readiness, metrics, the
OpenAPI document and the page needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; a refusal
is a 401 that never says more than "missing" or "invalid"."""

from __future__ import annotations

import logging

from .. import access, metrics
from ..keys import ApiKeys, presented_key
from .responses import answer_error

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/favicon.ico",
                        "/v2", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/static/",)
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="mnist-mlp"')


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class RequireApiKey:
    """WSGI middleware: a 401 for any request to a protected path without a valid key."""

    def __init__(self, app, keys: ApiKeys, route_of):
        self.app, self.keys, self.route_of = app, keys, route_of

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if is_open(path) or environ["REQUEST_METHOD"] == "OPTIONS":  # a CORS preflight carries no key
            return self.app(environ, start_response)
        key = presented_key(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
        if key is not None and self.keys.valid(key):
            return self.app(environ, start_response)
        reason = "missing" if key is None else "invalid"
        route = self.route_of(path, environ["REQUEST_METHOD"])
        access.note(environ, route=route)
        metrics.AUTH_FAILURES.labels(route, reason).inc()
        log.warning("refused a request without a valid API key", extra={"route": route, "reason": reason})
        return answer_error(start_response, path, 401, "unauthorized", f"{reason} API key: send "
                            "Authorization: Bearer <key> or X-API-Key: <key>", [CHALLENGE])
