"""Delivery of events to a CloudEvents sink over one kept-alive HTTP/1.1 connection.

A batch of events is written in one go and their answers read back in order (HTTP/1.1 pipelining):
http.client spends about 190 us of CPU on each POST, as much as the inference request the event
describes (bench/README.md, "Payload logging and drift"), while a batch costs a few microseconds an event.
Answers are parsed by httptools (llhttp, the parser of Node.js and uvicorn). An event whose answer
is missing (the connection broke, the sink timed out) or says 408, 429 or 5xx is sent again, at most
`retries` more times; any other answer is final. A sink that answers `Connection: close` has the
rest of the batch sent again on a new connection, which is also what it gets after any failure.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

import httptools

RETRIED_STATUSES = frozenset({408, 429})
READ_BYTES = 65536


class HttpSink:
    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.secure = parts.scheme == "https"
        self.hostname, self.port = parts.hostname or "", parts.port or (443 if self.secure else 80)
        self.host = parts.netloc.rpartition("@")[2]  # the Host header
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.connection: socket.socket | None = None

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}{self.path}"

    def send(self, messages: list[bytes]) -> list[int | None]:
        """Each message's status (None: no answer), in order; stops at the first missing answer."""
        answers = _Answers()
        try:
            connection = self.connection or self._connect()
            connection.sendall(b"".join(messages))
            answers.parser = httptools.HttpResponseParser(answers)
            while len(answers.statuses) < len(messages) and not answers.closing:
                chunk = connection.recv(READ_BYTES)
                if not chunk:
                    break
                answers.parser.feed_data(chunk)
        except (OSError, httptools.HttpParserError, ssl.SSLError):
            pass
        statuses: list[int | None] = list(answers.statuses[:len(messages)])
        if answers.closing or len(statuses) < len(messages):
            self.close()
        return statuses + [None] * (len(messages) - len(statuses))

    def _connect(self) -> socket.socket:
        connection = socket.create_connection((self.hostname, self.port), timeout=self.timeout)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.secure:
            connection = ssl.create_default_context().wrap_socket(connection, server_hostname=self.hostname)
        self.connection = connection
        return connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def retried(status: int | None) -> bool:
    """Whether an event answered `status` (None: not answered) should be sent again."""
    return status is None or status >= 500 or status in RETRIED_STATUSES


class _Answers:
    """httptools' callbacks: the status of each complete answer, and whether the sink closes after it."""

    def __init__(self):
        self.statuses: list[int] = []
        self.closing = self.close_after_this = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and value.strip().lower() == b"close":
            self.close_after_this = True

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())
        self.closing = self.close_after_this
