"""API keys (API_KEYS_FILE): every route but health, readiness, metrics, the OpenAPI document and
the page needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; so does every gRPC method but
the server's health and metadata (grpc_server.py), with the same keys as metadata.

The file holds one key per line, in clear or as `sha256:<hex digest of the key>` (so a mounted
Secret need not hold keys in clear); `#` starts a comment. It is re-read when it changes (rotation
without a restart: add the new key, move clients, remove the old one). Keys are compared as SHA-256
digests with hmac.compare_digest against every known digest, so the time taken says nothing about
which keys exist; a refusal is a 401 that never says more than "missing" or "invalid".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from pathlib import Path

from mnist_artifact.repository import stamp

from . import errors, metrics, observe
from .files import read_keys

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/favicon.ico",
                        "/v2", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/static/",)
RELOAD_SECONDS = 1.0  # look at the file at most this often
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="mnist-mlp"')


class ApiKeys:
    """The keys of API_KEYS_FILE, re-read when the file changes; an unreadable or empty file keeps the last keys."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._digests = read_keys(self.path)
        self._stamp, self._checked = stamp(self.path), time.monotonic()
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_SECONDS:
            return
        with self._lock:
            self._checked = now
            current = stamp(self.path)
            if current == self._stamp:
                return
            self._stamp = current
            try:
                self._digests = read_keys(self.path)
                log.info("API keys reloaded", extra={"keys": len(self._digests)})
            except ValueError as e:
                log.warning("kept the previous API keys", extra={"reason": str(e)})

    def valid(self, key: str) -> bool:
        self._refresh()
        digest = hashlib.sha256(key.encode()).digest()
        match = False
        for known in self._digests:  # every digest, always: no early exit
            match |= hmac.compare_digest(digest, known)
        return match


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` or `X-API-Key: <key>` header (or gRPC metadata)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key or None


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
        observe.note(environ, route=route)
        metrics.AUTH_FAILURES.labels(route, reason).inc()
        log.warning("refused a request without a valid API key", extra={"route": route, "reason": reason})
        return errors.answer_error(start_response, path, 401, "unauthorized", f"{reason} API key: send "
                                   "Authorization: Bearer <key> or X-API-Key: <key>", [CHALLENGE])
