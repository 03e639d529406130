"""Shedding at accept (QUEUE_TIMEOUT, admission.py): a late inference request is answered 503 with
Retry-After from the plain socket, before a greenlet, a gevent socket or gunicorn's parser is made for
it, which would cost more than the rest of the shed (bench/README.md). The kernel tells how long the
request waited (TCP_INFO) and what it asks for (a peek at the receive buffer).
"""

from __future__ import annotations

import _socket
import contextlib
import functools
import re
import socket
import struct

import gevent
from gevent.socket import socket as GeventSocket

from .. import errors, metrics
from ..admission import Admission
from ..http.routes import inference_rule

RETRY_AFTER_SECONDS = 1
TCP_INFO_SIZE = 56  # struct tcp_info up to tcpi_last_data_recv
LAST_DATA_RECV_OFFSET = 52  # __u32 tcpi_last_data_recv: milliseconds since the last data arrived


def waited_seconds(sock: socket.socket) -> float:
    """Seconds since the last bytes of the client's data arrived (0 where the kernel cannot tell)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (OSError, AttributeError):  # a Unix socket, or not Linux
        return 0.0
    return struct.unpack_from("I", info, LAST_DATA_RECV_OFFSET)[0] / 1000


REQUEST_HEAD = re.compile(rb"([A-Z]+) ([^ ?]+)[^\r\n]* HTTP/1\.[01]\r\n")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n")


def peek_request(sock: socket.socket, limit: int = 1 << 16) -> tuple[str, str, int] | None:
    """(method, path, bytes) of the HTTP/1.x request waiting in `sock`'s receive buffer, without
    taking it out; bytes is the whole request's length when all of it has arrived (head and a
    Content-Length body), else 0. None when no request line has arrived."""
    try:
        data = sock.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (BlockingIOError), or the client is gone
        return None
    line = REQUEST_HEAD.match(data)
    if line is None:
        return None
    method, path = line.group(1).decode(), line.group(2).decode("latin-1")
    head_end = data.find(b"\r\n\r\n", line.end() - 2)
    if head_end < 0:
        return method, path, 0
    head = data[:head_end + 2].lower()
    if b"\r\ntransfer-encoding:" in head:
        return method, path, 0
    length = CONTENT_LENGTH.search(head)
    total = head_end + 4 + (int(length.group(1)) if length else 0)
    return method, path, total if total <= len(data) else 0


def shed_if_late(client: _socket.socket, admission: Admission) -> bool:
    """Answer 503 and close an inference request that waited past the budget, without parsing it.
    The whole request is taken out of the socket first when it has all arrived (nearly always, after
    a wait): closing a socket with unread data would reset the connection instead of answering it.
    Otherwise a greenlet reads what the client still sends until it closes (a lingering close)."""
    if admission.on_time(waited_seconds(client)):
        return False
    request = peek_request(client)
    rule = request and inference_rule(request[1])
    if not rule:
        return False
    method, path, length = request
    try:
        if length:
            client.recv(length, socket.MSG_DONTWAIT)
        # MSG_MORE holds the answer back for close() to send it with the FIN, in one segment.
        client.send(answer_503(path.startswith("/v2")), socket.MSG_DONTWAIT | (socket.MSG_MORE if length else 0))
    except OSError:
        pass  # the client is gone: nothing to answer
    metrics.observe_shed(rule, method)
    if length:
        client.close()
    else:
        gevent.spawn(linger, GeventSocket(fileno=client.detach()))
    return True


def linger(client) -> None:
    with contextlib.closing(client), contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)
        with gevent.Timeout(RETRY_AFTER_SECONDS, False):
            while client.recv(1 << 16):
                pass


@functools.cache
def answer_503(v2: bool) -> bytes:
    """The whole 503 answer, in the protocol's error form (/v2 paths, or the service's own)."""
    body = errors.error_body_for("/v2" if v2 else "/", "overloaded", "the service is overloaded: retry after "
                                 f"{RETRY_AFTER_SECONDS} s", {"retry_after_seconds": RETRY_AFTER_SECONDS})
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
