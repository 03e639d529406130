"""API keys (API_KEYS_FILE), for HTTP (http/api_keys.py) and gRPC (grpc/observe.py) alike.

The file holds one key per line, in clear or as `sha256:<hex digest of the key>` (so a mounted
Secret need not hold keys in clear); `#` starts a comment. It is re-read when it changes (rotation
without a restart: add the new key, move clients, remove the old one). Keys are compared as SHA-256
digests with hmac.compare_digest against every known digest, so the time taken says nothing about
which keys exist; a refusal never says more than "missing" or "invalid".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from pathlib import Path

from mnist_artifact.repository import stamp

log = logging.getLogger(__name__)

DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
RELOAD_SECONDS = 1.0  # look at the file at most this often


def read_keys(path: Path) -> list[bytes]:
    """The SHA-256 digests of the API keys in `path`. ValueError (one line) when it has none or
    cannot be read: settings.py checks the file this way at start."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"API_KEYS_FILE={path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    digests = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        hashed = DIGEST.fullmatch(line)
        digests.append(bytes.fromhex(hashed.group(1)) if hashed else hashlib.sha256(line.encode()).digest())
    if not digests:
        raise ValueError(f"API_KEYS_FILE={path}: no keys (one per line, or sha256:<hex digest>)")
    return digests


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
