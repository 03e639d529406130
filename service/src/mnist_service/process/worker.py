"""The gunicorn worker mnist-serve runs by default: gevent's, bounded against slow clients and overload.

A sync worker is busy for as long as one client takes to send its request, so a few clients that
trickle their headers stop the service (bench/README.md, "Slow clients and overload"). Under gevent
a waiting client costs a greenlet, not a worker; this class adds the two bounds gevent lacks:
- CLIENT_TIMEOUT: a connection must deliver its first request and take its answer within this many
  seconds, else it is closed; on a kept-alive connection the next request's head must come within
  KEEPALIVE seconds (gunicorn's wait: else the connection is closed quietly, as idle), its body and
  answer within CLIENT_TIMEOUT. Each next request waits one turn of the event loop, so that all
  connections are served in turn, and a crowd of connections is not kept alive (CROWD_SHARE);
- QUEUE_TIMEOUT (QUEUE_TIMEOUT_MAX under a crowd): an inference request that waited longer than
  this before its worker starts it is answered 503 with Retry-After straight from the socket, before
  gunicorn parses it (shedding.py; a later request on a kept-alive connection: once its head is
  parsed); health, metrics and the other routes are always served.
"""

from __future__ import annotations

import _socket
import contextlib

import gevent
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from gunicorn.workers import ggevent

from .. import metrics
from ..admission import Admission
from ..errors import ClientTimeout
from ..http.routes import inference_rule
from ..settings import Settings
from .shedding import answer_503, shed_if_late, waited_seconds

SHED_BATCH = 256  # connections one wake-up may shed before it lets the event loop run
TURN_SECONDS = 1e-6  # a kept-alive connection's next request waits one turn of the event loop
# Past WORKER_CONNECTIONS / CROWD_SHARE open connections (31 by default), a worker closes each after
# its answer, so that a crowd takes turns through accept, where late requests are shed (shedding.py),
# and is spread over the workers request by request: a kept-alive connection stays with the worker
# that took it. A crowd of 8,000 kept alive up to 250 a worker had 1.2-1.8 % of its requests time out
# (target 1 %), none at 62; 64 connections of PNG requests kept alive on 2 workers had 0.3 % shed
# past QUEUE_TIMEOUT (bench/README.md, "Slow clients and overload").
CROWD_SHARE = 32


class Worker(ggevent.GeventWorker):
    admission: Admission | None = None  # one worker per process: the accept loop below asks it

    def init_process(self):
        settings = Settings.from_env()
        self.client_timeout = settings.client_timeout
        self.open_connections, self.crowd = 0, settings.worker_connections // CROWD_SHARE
        Worker.admission = Admission(settings.queue_timeout, settings.queue_timeout_max)
        super().init_process()  # patches the standard library for gevent, loads the app, runs

    def handle(self, listener, client, addr):
        self.open_connections += 1
        try:
            with _deadline(self.client_timeout):
                super().handle(listener, client, addr)
        finally:
            self.open_connections -= 1

    def timeout_ctx(self):
        """The wait for a request's head: CLIENT_TIMEOUT (handle) for a connection's first request,
        gunicorn's KEEPALIVE wait for the next ones, after which an idle connection is closed quietly."""
        return super().timeout_ctx() if _deadline_of_this_connection().served else contextlib.nullcontext()

    def handle_request(self, listener_name, req, sock, addr):
        """A later request on a kept-alive connection waits its turn behind the other connections' and
        was not seen at accept: the same budget applies to it once its head is parsed."""
        deadline = _deadline_of_this_connection()
        if req.req_number > 1:
            deadline.resume()  # the head came within KEEPALIVE; the body and the answer get CLIENT_TIMEOUT
            # A timer, not sleep(0), which would pass over greenlets whose sockets became readable
            # meanwhile: a connection whose client sends at once could keep the worker to itself
            # (p99 14 against 21 ms at 16 connections on one core, 100 ms and more without a turn).
            gevent.sleep(TURN_SECONDS)
            rule = inference_rule(req.path)
            if rule and not self.admission.on_time(waited_seconds(sock)):
                while req.body.read(1 << 16):  # unread data would reset the connection instead
                    pass
                sock.sendall(answer_503(req.path.startswith("/v2")))
                metrics.observe_shed(rule, req.method)
                raise StopIteration  # gunicorn's way to end a connection after its answer
        if self.open_connections > self.crowd:
            req.must_close = True  # answered with Connection: close: the crowd takes turns through accept
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            deadline.pause()  # until the next request's head, which KEEPALIVE bounds

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ClientTimeout):
            metrics.CLIENT_TIMEOUTS.inc()
            return  # nothing to answer a client that does not keep up; the caller closes the socket
        super().handle_error(req, client, addr, exc)


class _Deadline(gevent.Timeout):
    """CLIENT_TIMEOUT for the request a connection is on: paused once it is answered, resumed (from
    zero) when the next one's head has come."""

    served = False  # whether the connection has answered a request (kept alive since)

    def pause(self) -> None:
        self.served = True
        self.cancel()

    def resume(self) -> None:
        self.start()


def _deadline(seconds: float) -> _Deadline:
    deadline = gevent.getcurrent().mnist_deadline = _Deadline(seconds, ClientTimeout())
    return deadline


def _deadline_of_this_connection() -> _Deadline:
    return gevent.getcurrent().mnist_deadline


class _SheddingServer(StreamServer):
    """gevent's accept loop, shedding late inference requests as it accepts them (shedding.py).
    One call accepts until it finds a
    connection to serve, so a worker sheds a whole backlog at once but still takes one request to
    serve per wake-up, which shares the load among the workers as gunicorn intends."""

    def do_read(self):
        for _ in range(SHED_BATCH):
            try:
                fd, address = self.socket._accept()
            except BlockingIOError:
                return None
            client = _socket.socket(self.socket.family, self.socket.type, self.socket.proto, fd)
            if not shed_if_late(client, Worker.admission):
                return GeventSocket(self.socket.family, self.socket.type, self.socket.proto,
                                    fileno=client.detach()), address
        return None


ggevent.StreamServer = _SheddingServer  # the server class GeventWorker.run builds its listeners with
