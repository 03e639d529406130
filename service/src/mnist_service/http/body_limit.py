"""MAX_BODY_BYTES for bodies sent without a Content-Length (Transfer-Encoding: chunked).

werkzeug refuses a Content-Length over the limit with a 413 before reading, but stops reading a
chunked body at the limit without an error (LimitedStream.readall skips the read that would
raise): the request would go on cut short and fail as malformed JSON or a truncated image. So a
chunked body is read here first, at most one byte past the limit, and handed on with its
Content-Length: a body over the limit then gets werkzeug's 413, from the route it was sent to.
"""

from __future__ import annotations

import io

READ_SIZE = 64 * 1024


class ChunkedBodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def __call__(self, environ, start_response):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = self._read(environ["wsgi.input"])
            del environ["HTTP_TRANSFER_ENCODING"]
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
        return self.app(environ, start_response)

    def _read(self, stream) -> bytes:
        """The body, or its first max_bytes + 1 bytes when it is longer."""
        chunks, size = [], 0
        while size <= self.max_bytes:
            chunk = stream.read(min(READ_SIZE, self.max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
