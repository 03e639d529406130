"""The gunicorn worker mnist-serve runs by default: gevent's, bounded against slow clients and overload.

A sync worker is busy for as long as one client takes to send its request, so a few clients that
trickle their headers stop the service (bench/README.md, "Slow clients and overload"). Under gevent
a waiting client costs a greenlet, not a worker; this class adds the two bounds gevent lacks:
- CLIENT_TIMEOUT: a connection must deliver its request and take its answer within this many
  seconds, else it is closed (one request per connection: gunicorn_config.py turns keep-alive off);
- QUEUE_TIMEOUT (QUEUE_TIMEOUT_MAX under a crowd): an inference request that waited longer than
  this before its worker starts it is answered 503 with Retry-After straight from the socket, before
  gunicorn parses it (shedding.py; a later request on a kept-alive connection: once its head is
  parsed); health, metrics and the other routes are always served.
"""

from __future__ import annotations

import _socket

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


class Worker(ggevent.GeventWorker):
    admission: Admission | None = None  # one worker per process: the accept loop below asks it

    def init_process(self):
        settings = Settings.from_env()
        self.client_timeout = settings.client_timeout
        Worker.admission = Admission(settings.queue_timeout, settings.queue_timeout_max)
        super().init_process()  # patches the standard library for gevent, loads the app, runs

    def handle(self, listener, client, addr):
        with gevent.Timeout(self.client_timeout, ClientTimeout()):
            super().handle(listener, client, addr)

    def handle_request(self, listener_name, req, sock, addr):
        """A later request on a kept-alive connection (only with gunicorn's --keep-alive) was not
        seen at accept: the same budget applies to it once its head is parsed."""
        rule = req.req_number > 1 and inference_rule(req.path)
        if rule and not self.admission.on_time(waited_seconds(sock)):
            while req.body.read(1 << 16):  # unread data would reset the connection instead
                pass
            sock.sendall(answer_503(req.path.startswith("/v2")))
            metrics.observe_shed(rule, req.method)
            raise StopIteration  # gunicorn's way to end a connection after its answer
        return super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ClientTimeout):
            metrics.CLIENT_TIMEOUTS.inc()
            return  # nothing to answer a client that does not keep up; the caller closes the socket
        super().handle_error(req, client, addr, exc)


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
