"""Load shedding: answer 503 at once rather than queue a request the service cannot start soon.

Under overload the queue is in two places: connections the kernel holds for accept() on the
listening socket (shared by all workers), and requests a gevent worker has accepted but not yet
started (it runs them one after another in its event loop). `QueueMonitor` watches both: the
listening socket's accept queue, read from the kernel (Linux TCP_INFO, one system call) whenever
a decision is made, and how late a timer fires that a greenlet sets every `interval` seconds (the
event loop's lag, as toobusy-js measures it for Node). Over either limit the worker is
overloaded: it accepts every waiting connection and answers inference requests 503 with
Retry-After (worker.py), which costs a fraction of a prediction, until both are back under.
"""

from __future__ import annotations

import socket
import struct
import time

TCP_INFO_SIZE = 104
ACCEPT_QUEUE_OFFSET = 24  # struct tcp_info.tcpi_unacked: a listening socket's accept queue length


def accept_queue(listener: socket.socket) -> int:
    """Connections waiting for accept() on a listening TCP socket (0 where the kernel cannot tell)."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (OSError, AttributeError):  # a Unix socket, or not Linux
        return 0
    return struct.unpack_from("I", info, ACCEPT_QUEUE_OFFSET)[0]


class QueueMonitor:
    def __init__(self, listeners: list[socket.socket], queue_limit: int, queue_timeout: float,
                 interval: float = 0.01):
        self.listeners, self.queue_limit, self.queue_timeout = listeners, queue_limit, queue_timeout
        self.interval = interval
        self.due = time.monotonic() + interval  # when the timer should fire next
        self.lag = 0.0  # how late it fired last time

    def run(self, sleep) -> None:
        """The timer loop, in its own greenlet (`sleep` is the event loop's)."""
        while True:
            self.due = time.monotonic() + self.interval
            sleep(self.interval)
            self.lag = max(0.0, time.monotonic() - self.due)

    def overloaded(self) -> bool:
        lag = max(self.lag, time.monotonic() - self.due)  # an overdue timer counts before it fires
        return lag > self.queue_timeout or sum(map(accept_queue, self.listeners)) > self.queue_limit
