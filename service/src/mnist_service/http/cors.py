"""Cross-origin requests (CORS_ORIGINS): pages on the listed origins may call the API (/v1/..., /v2/...).

A WSGI middleware rather than flask-cors: the inference routes are answered in front of Flask
(router.py), where Flask extensions never run. A preflight (OPTIONS with Origin and
Access-Control-Request-Method) from a listed origin is answered 204 with what it may send; from
any other origin, 403. Answers to listed origins carry Access-Control-Allow-Origin and expose the
headers that say which model answered. No credentials (cookies) are involved: API keys travel in
headers the preflight allows.
"""

from __future__ import annotations

from .responses import answer_error

API_PREFIXES = ("/v1/", "/v2/")
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = ("Authorization, Content-Type, X-API-Key, X-Client-Id, X-Request-ID, "
                 "Inference-Header-Content-Length")
EXPOSE_HEADERS = "X-Model-Version, X-Model-Label, X-Request-ID, Retry-After, Inference-Header-Content-Length"
MAX_AGE = "600"


class Cors:
    def __init__(self, app, origins: tuple[str, ...]):
        self.app, self.origins = app, frozenset(origins)

    def allowed(self, origin: str) -> bool:
        return origin in self.origins or "*" in self.origins

    def __call__(self, environ, start_response):
        origin = environ.get("HTTP_ORIGIN")
        path = environ.get("PATH_INFO", "")
        if not origin or not (path.startswith(API_PREFIXES) or path == "/v2"):
            return self.app(environ, start_response)
        if environ["REQUEST_METHOD"] == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            return self._preflight(origin, path, start_response)
        if not self.allowed(origin):
            return self.app(environ, start_response)  # answered as usual; the browser withholds it from the page

        def start(status, headers, exc_info=None):
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                        ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]
            return start_response(status, headers, exc_info)

        return self.app(environ, start)

    def _preflight(self, origin: str, path: str, start_response):
        if not self.allowed(origin):
            return answer_error(start_response, path, 403, "origin_not_allowed",
                                       f"origin {origin[:100]!r} is not in CORS_ORIGINS", [("Vary", "Origin")])
        start_response("204 No Content", [
            ("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
            ("Access-Control-Allow-Methods", ALLOW_METHODS), ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE), ("Content-Length", "0")])
        return [b""]
