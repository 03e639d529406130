"""The gunicorn worker mnist-serve runs by default: gevent's, bounded against slow clients and overload.

A sync worker is busy for as long as one client takes to send its request, so a few clients that
trickle their headers stop the service (bench/README.md, "Slow clients and overload"). Under gevent
a waiting client costs a greenlet, not a worker; this class adds the two bounds gevent lacks:
- CLIENT_TIMEOUT: a connection must deliver its request and take its answer within this many
  seconds, else it is closed (one request per connection: gunicorn_config.py turns keep-alive off);
- QUEUE_LIMIT and QUEUE_TIMEOUT: while more connections wait to be accepted, or the event loop
  runs later than that, inference requests are answered 503 with Retry-After at once, without the
  cost of the app (overload.py); health, metrics and the other routes are always served.
"""

from __future__ import annotations

import socket

import gevent
from gevent.server import StreamServer
from gunicorn.workers import ggevent

from . import errors, metrics
from .errors import ClientTimeout
from .overload import QueueMonitor
from .routes import inference_rule
from .settings import Settings

RETRY_AFTER_SECONDS = 1


class Worker(ggevent.GeventWorker):
    monitor: QueueMonitor | None = None  # one worker per process: the accept loop below asks it

    def init_process(self):
        settings = Settings.from_env()
        self.client_timeout = settings.client_timeout
        # Duplicates of the listening sockets, to read their accept queues: gevent takes the originals over.
        listeners = [socket.fromfd(listener.fileno(), listener.sock.family, listener.sock.type)
                     for listener in self.sockets]
        Worker.monitor = QueueMonitor(listeners, settings.queue_limit, settings.queue_timeout)
        super().init_process()  # patches the standard library for gevent, loads the app, runs

    def run(self):
        gevent.spawn(self.monitor.run, gevent.sleep)
        super().run()

    def handle(self, listener, client, addr):
        with gevent.Timeout(self.client_timeout, ClientTimeout()):
            super().handle(listener, client, addr)

    def handle_request(self, listener_name, req, sock, addr):
        rule = inference_rule(req.path) if self.monitor.overloaded() else None
        if rule is None:
            return super().handle_request(listener_name, req, sock, addr)
        _shed(req, sock, rule)
        raise StopIteration  # gunicorn's way to end a connection after its answer

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ClientTimeout):
            metrics.CLIENT_TIMEOUTS.inc()
            return  # nothing to answer a client that does not keep up; the caller closes the socket
        super().handle_error(req, client, addr, exc)


def _shed(req, sock, rule: str) -> None:
    """Answer 503 in the protocol's error form, after reading the body: closing a socket with
    unread data would reset the connection instead of answering it."""
    while req.body.read(1 << 16):
        pass
    body = errors.error_body_for(req.path, "overloaded", "the service is overloaded: retry after "
                                 f"{RETRY_AFTER_SECONDS} s", {"retry_after_seconds": RETRY_AFTER_SECONDS})
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode() + body)
    metrics.observe_shed(rule, req.method)


class _FairUntilOverloaded(StreamServer):
    """gunicorn has each worker accept one connection per wake-up when there are several workers,
    so that they share the load. While overloaded, every waiting connection is accepted instead:
    shed at once, rather than left in the kernel's queue past the clients' timeouts."""

    @property
    def max_accept(self) -> int:
        monitor = Worker.monitor
        return 100 if monitor is not None and monitor.overloaded() else 1

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        pass  # gunicorn sets 1; the property decides


ggevent.StreamServer = _FairUntilOverloaded  # the server class GeventWorker.run builds its listeners with
