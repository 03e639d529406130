"""worker.py and overload.py through a real mnist-serve: slow and silent clients are cut off after
CLIENT_TIMEOUT without holding up anyone else, and an overloaded worker answers inference requests
503 with Retry-After at once while health checks still pass."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from mnist_service.overload import QueueMonitor, accept_queue
from service_helpers import metric_total, wait_for

BODY = json.dumps({"instances": [[0] * 784]}).encode()


def request_bytes(path: str = "/v1/predict", body: bytes = BODY) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (reads everything it sends), None if it stays open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def worker_pids(server) -> set[int]:
    return {child.pid for child in psutil.Process(server.process.pid).children()}


# -- slow, silent and broken clients ------------------------------------------------------------

def trickle(port: int, stop: threading.Event, head_only: bool) -> socket.socket:
    """A client that sends its request a byte a second (the headers, or a body after full headers)."""
    sock = socket.create_connection(("127.0.0.1", port))
    data = request_bytes()
    head, body = data[:-len(BODY)], BODY
    if not head_only:
        sock.sendall(head)
    rest = head if head_only else body

    def send():
        for byte in rest:
            if stop.wait(1.0):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=send, daemon=True).start()
    return sock


@pytest.mark.parametrize("kind", ["headers", "body", "silent"])
def test_slow_clients_are_cut_off_and_do_not_hold_up_the_others(model_dir, serve, kind):
    server = serve(model_dir, CLIENT_TIMEOUT=2)
    workers = worker_pids(server)
    stop = threading.Event()
    if kind == "silent":
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
    else:
        slow = [trickle(server.port, stop, head_only=kind == "headers") for _ in range(32)]
    try:
        latencies = []
        for _ in range(40):  # normal traffic meanwhile, through both workers
            started = time.monotonic()
            assert requests.post(server.url + "/v1/predict", data=BODY, timeout=2,
                                 headers={"Content-Type": "application/json"}).status_code == 200
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0
        closed = [closed_within(sock, 10) for sock in slow]
        assert all(seconds is not None for seconds in closed), "a slow client was never cut off"
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    assert metric_total(server.url, "mnist_client_timeouts_total") >= 32
    assert worker_pids(server) == workers  # no worker was lost or replaced


def test_a_client_that_disconnects_mid_request_leaves_nothing_stuck(model_dir, serve):
    server = serve(model_dir)
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(request_bytes()[:-100])  # the body is cut short, then the client is gone
        sock.close()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request_bytes(body=json.dumps({"instances": [[0] * 784] * 200}).encode()))
    sock.close()  # gone before the answer is written
    assert requests.post(server.url + "/v1/predict", data=BODY, timeout=5,
                         headers={"Content-Type": "application/json"}).status_code == 200


@pytest.mark.parametrize("request_head, status", [
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", b"414"),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", b"431"),
], ids=["request-line", "header-field", "header-count"])
def test_requests_over_the_limits_are_refused(model_dir, serve, request_head, status):
    server = serve(model_dir)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


# -- overload -----------------------------------------------------------------------------------

def test_an_overloaded_worker_sheds_inference_but_answers_health_checks(model_dir, serve):
    """The one worker is stopped while requests queue in the kernel: when it resumes, more are
    waiting than QUEUE_LIMIT and its event loop is late, so inference gets 503 at once."""
    server = serve(model_dir, workers=1, QUEUE_LIMIT=2, QUEUE_TIMEOUT=0.1)
    (worker,) = worker_pids(server)
    os.kill(worker, signal.SIGSTOP)
    try:
        paths = ["/v1/predict", "/v2/models/mnist/infer", "/healthz"] + ["/v1/predict"] * 5
        queued = [socket.create_connection(("127.0.0.1", server.port)) for _ in paths]
        for sock, path in zip(queued, paths):
            sock.sendall(request_bytes(path) if path != "/healthz" else b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)  # the worker's event loop falls half a second behind
    finally:
        os.kill(worker, signal.SIGCONT)
    answers = {}
    for sock, path in zip(queued, paths):
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        answers.setdefault(path, []).append(data)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers["/healthz"])
    shed = [a for a in answers["/v1/predict"] + answers["/v2/models/mnist/infer"] if a.startswith(b"HTTP/1.1 503")]
    assert len(shed) >= 5
    for answer in shed:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"\r\nRetry-After: 1\r\n" in head and b"Content-Type: application/json" in head
        error = json.loads(body)["error"]
        assert error == "the service is overloaded: retry after 1 s" or error["code"] == "overloaded"
    assert metric_total(server.url, "mnist_http_requests_shed_total") == len(shed)
    assert metric_total(server.url, "mnist_http_requests_total", status="503") == len(shed)
    assert requests.post(server.url + "/v1/predict", data=BODY, timeout=5,  # back to normal
                         headers={"Content-Type": "application/json"}).status_code == 200


def test_queue_monitor_reads_the_accept_queue_and_the_event_loop_lag():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        monitor = QueueMonitor([listener], queue_limit=3, queue_timeout=0.2)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        assert wait_for(lambda: accept_queue(listener) == 3, timeout=2, interval=0.01)
        assert not monitor.overloaded()
        clients.append(socket.create_connection(listener.getsockname()))
        assert wait_for(monitor.overloaded, timeout=2, interval=0.01)
        for client in clients:
            client.close()
        while accept_queue(listener):
            listener.accept()[0].close()
        assert not monitor.overloaded()
        monitor.due = time.monotonic() - 0.5  # the timer is half a second overdue: the loop is late
        assert monitor.overloaded()


def test_each_worker_does_its_linear_algebra_on_one_thread(model_dir, serve):
    """The workers are the parallelism: OpenBLAS's own threads in every worker fought over the cores
    (batch-8 requests 25x slower on 2 cores), so mnist-serve sets one unless the user chose."""
    server = serve(model_dir)
    for pid in worker_pids(server):
        assert psutil.Process(pid).environ()["OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS", "1")


def test_the_metrics_directory_need_not_exist_yet(model_dir, serve, tmp_path):
    """As in the image (PROMETHEUS_MULTIPROC_DIR=/tmp/metrics on an empty tmpfs): the worker class,
    loaded by gunicorn's master before any hook runs, imports the metrics, which open files there."""
    server = serve(model_dir, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "not" / "yet" / "metrics"))
    assert requests.post(server.url + "/v1/predict", data=BODY, timeout=5,
                         headers={"Content-Type": "application/json"}).status_code == 200
