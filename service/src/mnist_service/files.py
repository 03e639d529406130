"""The API keys file's format (API_KEYS_FILE). Light on imports: settings.py, and so the container's
healthcheck, read the keys file through here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")


def read_keys(path: Path) -> list[bytes]:
    """The SHA-256 digests of the API keys in `path`: one per line, in clear or as sha256:<hex digest>,
    `#` starting a comment. ValueError (one line) when it has none or cannot be read."""
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
