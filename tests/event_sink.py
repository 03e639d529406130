"""A real CloudEvents receiver on loopback for the tests: an HTTP/1.1 server (keep-alive, so pipelined
requests are answered in order) that parses each request with the CloudEvents SDK's own parser,
`cloudevents.http.from_http`, as a Knative or KServe consumer would. It can answer late or with
another status, to play a slow or failing sink."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import CloudEvent, from_http


class CloudEventsSink:
    def __init__(self, delay: float = 0.0, status: int = 202):
        self.events: list[CloudEvent] = []
        self.errors: list[str] = []
        self.delay, self.status = delay, status
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    event = from_http(dict(self.headers.items()), body or None)
                except Exception as e:  # the SDK refused it: a test fails on sink.errors
                    with sink.lock:
                        sink.errors.append(f"{type(e).__name__}: {e}")
                else:
                    with sink.lock:
                        sink.events.append(event)
                if sink.delay:
                    time.sleep(sink.delay)
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[CloudEvent]:
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
