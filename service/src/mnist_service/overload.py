"""Load shedding by how long a request waited, decided before it is parsed.

Under overload requests wait in the listening socket's accept queue (shared by the workers) and in
a gevent worker that has accepted them but not yet started them. The kernel knows how long each
one waited: TCP_INFO's tcpi_last_data_recv, the time since the request's last bytes arrived, read
with one system call when the worker accepts it. A request that waited longer than the
budget is answered 503 with Retry-After straight from the socket (worker.py), which costs a small
fraction of a prediction; the rest are served. The queue therefore stays about one budget long,
whatever the offered rate.

A crowd that reconnects as soon as it is answered (a retry storm, a closed-loop load test) keeps
every connection waiting however fast the excess is shed: shedding cannot shorten that queue, only
waste the capacity (Little's law: the wait is the crowd over the answers per second). So when a
whole window goes by in which every request came late, the budget rises to the ceiling: the
workers serve what they can answer within it and shed only what waited longer. It comes back to
the normal budget once a request waited less than half of that (the crowd is gone), or after
`hold` seconds, to see whether the crowd is still there (if so, the next window sends it up again).
"""

from __future__ import annotations

import math
import re
import socket
import struct
import time

TCP_INFO_SIZE = 56  # struct tcp_info up to tcpi_last_data_recv
LAST_DATA_RECV_OFFSET = 52  # __u32 tcpi_last_data_recv: milliseconds since the last data arrived


def waited_seconds(sock: socket.socket) -> float:
    """Seconds since the last bytes of the client's data arrived (0 where the kernel cannot tell)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (OSError, AttributeError):  # a Unix socket, or not Linux
        return 0.0
    return struct.unpack_from("I", info, LAST_DATA_RECV_OFFSET)[0] / 1000


class Admission:
    """One worker's shedding budget. `on_time(waited)`: whether a request that waited that long may
    still be started; a late inference request is shed (worker.py)."""

    def __init__(self, budget: float, ceiling: float, window: float = 0.25, hold: float = 5.0,
                 clock=time.monotonic):
        self.normal, self.ceiling = budget, max(budget, ceiling)
        self.window, self.hold, self.clock = window, hold, clock
        self.budget = budget
        self.raised_at = 0.0
        self.window_ends = clock() + window
        self.on_time_count = self.late_count = 0
        self.shortest_wait = math.inf

    def on_time(self, waited: float) -> bool:
        now = self.clock()
        if now >= self.window_ends:
            self._adapt(now)
        self.shortest_wait = min(self.shortest_wait, waited)
        if waited <= self.budget:
            self.on_time_count += 1
            return True
        self.late_count += 1
        return False

    def _adapt(self, now: float) -> None:
        if self.late_count and not self.on_time_count:  # shedding does not drain the queue: a crowd
            self.budget, self.raised_at = self.ceiling, now
        elif self.budget > self.normal and (self.shortest_wait < self.normal / 2 or now - self.raised_at >= self.hold):
            self.budget = self.normal
        self.on_time_count = self.late_count = 0
        self.shortest_wait = math.inf
        self.window_ends = now + self.window


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
