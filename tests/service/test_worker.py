"""process/worker.py, process/shedding.py and admission.py through a real mnist-serve: slow and
silent clients are cut off after CLIENT_TIMEOUT without holding up anyone else, and inference
requests that waited too long are answered 503 with Retry-After before they are parsed, while
health checks still pass."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from mnist_service.admission import Admission
from mnist_service.process.shedding import peek_request, waited_seconds
from service_helpers import metric_total, wait_for

BODY = json.dumps({"instances": [[0] * 784]}).encode()
HEALTH_CHECK = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"  # one request, then closed


def request_bytes(path: str = "/v1/predict", body: bytes = BODY, close: bool = True) -> bytes:
    """A request; `close`: the client asks for the connection to be closed after the answer."""
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + ("Connection: close\r\n" if close else "")
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_one_answer(reader) -> bytes:
    """One whole answer from a kept-alive connection's reader (sock.makefile("rb")): head and body."""
    head = b"".join(iter(reader.readline, b"\r\n"))
    return head + b"\r\n" + reader.read(int(re.search(rb"Content-Length: (\d+)", head)[1]))


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

def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset (rather than a clean close) fails the test."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_requests_that_waited_too_long_are_shed_unparsed_while_health_checks_pass(model_dir, serve):
    """The one worker is stopped while requests queue in the kernel: when it resumes, they have waited
    longer than QUEUE_TIMEOUT, so every inference request gets 503 with Retry-After and a clean close
    (no reset, also when its body is still on the way), and the health check is answered."""
    server = serve(model_dir, workers=1, QUEUE_TIMEOUT=0.1)
    (worker,) = worker_pids(server)
    os.kill(worker, signal.SIGSTOP)
    try:
        paths = ["/v1/predict", "/v2/models/mnist/infer", "/healthz"] + ["/v1/predict"] * 5
        queued = [socket.create_connection(("127.0.0.1", server.port)) for _ in paths]
        for sock, path in zip(queued, paths):
            sock.sendall(request_bytes(path) if path != "/healthz" else HEALTH_CHECK)
        partial = socket.create_connection(("127.0.0.1", server.port))  # the rest of its body comes later
        partial.sendall(request_bytes()[:-100])
        time.sleep(0.5)  # longer than QUEUE_TIMEOUT
    finally:
        os.kill(worker, signal.SIGCONT)
    answers = {}
    for sock, path in zip(queued, paths):
        answers.setdefault(path, []).append(read_answer(sock))
    time.sleep(0.2)
    partial.sendall(request_bytes()[-100:])  # the server answered already and reads on until we close
    answers["/v1/predict"].append(read_answer(partial))
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers["/healthz"])
    shed = answers["/v1/predict"] + answers["/v2/models/mnist/infer"]
    assert len(shed) == 8
    for answer in shed:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 1\r\n" in head and b"Content-Type: application/json" in head
        assert f"Content-Length: {len(body)}\r\n".encode() in head
        error = json.loads(body)["error"]
        assert error == "the service is overloaded: retry after 1 s" or error["code"] == "overloaded"
    assert json.loads(answers["/v2/models/mnist/infer"][0].split(b"\r\n\r\n", 1)[1]) == {
        "error": "the service is overloaded: retry after 1 s"}  # the Open Inference Protocol's error form
    assert metric_total(server.url, "mnist_http_requests_shed_total") == len(shed)
    assert metric_total(server.url, "mnist_http_requests_shed_total", route="/v2/models/<name>/infer") == 1
    assert metric_total(server.url, "mnist_http_requests_total", status="503") == len(shed)
    assert requests.post(server.url + "/v1/predict", data=BODY, timeout=5,  # back to normal
                         headers={"Content-Type": "application/json"}).status_code == 200


def test_a_request_that_waited_on_a_kept_alive_connection_is_shed_too(model_dir, serve):
    """A kept-alive connection's second request is never accepted: it is checked against the same
    budget once its head is parsed."""
    server = serve(model_dir, workers=1, QUEUE_TIMEOUT=0.1, KEEPALIVE=5)
    (worker,) = worker_pids(server)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(5)
        sock.sendall(request_bytes(close=False))
        reader = sock.makefile("rb")
        first = read_one_answer(reader)
        assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
        os.kill(worker, signal.SIGSTOP)
        try:
            sock.sendall(request_bytes(close=False))
            time.sleep(0.5)
        finally:
            os.kill(worker, signal.SIGCONT)
        second = reader.read()  # to the server's close
    assert second.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in second
    assert metric_total(server.url, "mnist_http_requests_shed_total") == 1


def test_a_kept_alive_connection_serves_request_after_request_then_closes_when_idle(model_dir, serve):
    """KEEPALIVE: the next request may take that long to come; an idle connection is then closed
    quietly, not counted as a client too slow."""
    server = serve(model_dir, KEEPALIVE=1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(5)
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(request_bytes(close=False))
            assert read_one_answer(reader).startswith(b"HTTP/1.1 200")
        idle = closed_within(sock, 5)
    assert idle is not None and 0.8 <= idle <= 3
    assert metric_total(server.url, "mnist_client_timeouts_total") == 0


def test_a_crowd_of_connections_is_not_kept_alive(model_dir, serve):
    """Past a thirty-second of WORKER_CONNECTIONS open, a worker closes each connection after its answer,
    so that a crowd takes turns through accept instead of the first connections keeping the worker."""
    server = serve(model_dir, workers=1, WORKER_CONNECTIONS=64, KEEPALIVE=5)  # kept alive while at most 2 are open

    def answer_on_a_kept_alive_connection() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(5)
            sock.sendall(request_bytes(close=False))
            return read_one_answer(sock.makefile("rb"))

    assert b"Connection: close" not in answer_on_a_kept_alive_connection()
    crowd = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.5)  # accepted by now: each holds a greenlet, waiting for its request
        answer = answer_on_a_kept_alive_connection()
    finally:
        for sock in crowd:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


def test_a_kept_alive_request_that_trickles_its_body_is_cut_off_after_client_timeout(model_dir, serve):
    """A connection's later request has CLIENT_TIMEOUT for its body and answer, as its first had."""
    server = serve(model_dir, CLIENT_TIMEOUT=1, KEEPALIVE=5)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(5)
        reader = sock.makefile("rb")
        sock.sendall(request_bytes(close=False))
        assert read_one_answer(reader).startswith(b"HTTP/1.1 200")
        sock.sendall(request_bytes(close=False)[:-100])  # the head and most of the body, then nothing
        cut = closed_within(sock, 5)
    assert cut is not None and 0.8 <= cut <= 3
    assert metric_total(server.url, "mnist_client_timeouts_total") == 1


def test_a_slow_client_that_waited_is_not_shed_for_its_own_slowness(model_dir, serve):
    """The wait is counted from the request's last bytes: a client that took its time to send them
    was not kept waiting by the service, and is served."""
    server = serve(model_dir, workers=1, QUEUE_TIMEOUT=0.1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        data = request_bytes()
        sock.sendall(data[:-10])
        time.sleep(0.4)
        sock.sendall(data[-10:])
        assert read_answer(sock).startswith(b"HTTP/1.1 200")


def test_admission_sheds_past_the_budget_and_raises_it_for_a_crowd():
    now = [0.0]
    admission = Admission(budget=0.25, ceiling=1.0, window=0.25, hold=5.0, clock=lambda: now[0])
    assert admission.on_time(0.2) and not admission.on_time(0.3)
    now[0] = 0.3  # that window had a request on time: shedding drains the queue, the budget stays
    assert not admission.on_time(0.9)
    now[0] = 0.6  # a whole window shed: a crowd that shedding cannot shorten
    assert admission.on_time(0.9) and admission.budget == 1.0
    assert not admission.on_time(1.1)
    now[0] = 5.0  # held while every request waits long
    assert admission.on_time(0.9)
    now[0] = 5.7  # hold over: back to the normal budget...
    assert not admission.on_time(0.9)
    now[0] = 6.0  # ...and up again at once while the crowd is still there
    assert admission.on_time(0.9)
    assert admission.on_time(0.1)  # a short wait: the crowd is gone
    now[0] = 6.3
    assert not admission.on_time(0.3) and admission.budget == 0.25


@pytest.fixture
def connected():
    """(server side, client side) of a loopback TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        yield server, client
        server.close()
        client.close()


@pytest.mark.parametrize("data, expected", [
    (request_bytes(), ("POST", "/v1/predict", len(request_bytes()))),
    (request_bytes("/v2/models/mnist/infer?x=1"),
     ("POST", "/v2/models/mnist/infer", len(request_bytes("/v2/models/mnist/infer?x=1")))),
    (request_bytes()[:-1], ("POST", "/v1/predict", 0)),  # the body is not all there
    (request_bytes()[:30], ("POST", "/v1/predict", 0)),  # nor the headers
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", ("GET", "/healthz", 34)),
    (b"POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     ("POST", "/v1/predict", 0)),  # chunked: gunicorn reads it
    (b"POST /v1/predict HTTP/1.1\r\nCONTENT-LENGTH: 2\r\n\r\n{}", ("POST", "/v1/predict", 50)),
    (b"POST /v1/pre", None),  # no whole request line yet
    (b"\x16\x03\x01\x02\x00", None),  # not HTTP/1 (TLS)
])
def test_peek_request_reads_the_request_line_and_leaves_the_request_in_place(connected, data, expected):
    server, client = connected
    client.sendall(data)
    time.sleep(0.05)  # on loopback the bytes are there already; this leaves no doubt
    assert peek_request(server) == expected
    assert server.recv(len(data), socket.MSG_DONTWAIT) == data  # still there, whole


def test_waited_seconds_counts_from_the_last_bytes_received(connected):
    server, client = connected
    client.sendall(b"GET / HTTP/1.1\r\n")
    time.sleep(0.3)
    assert 0.25 <= waited_seconds(server) < 1
    client.sendall(b"\r\n")
    assert wait_for(lambda: waited_seconds(server) < 0.1, timeout=1, interval=0.01)


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
