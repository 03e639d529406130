"""mnist-serve as deployed: gunicorn with 2 workers on a loopback port, real HTTP clients."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from mnist_artifact import Model
from service_helpers import bomb_png, digit, expected, free_port, metric_total, png, wait_for, write_version


def serving_version(url: str) -> int | None:
    response = requests.get(url + "/readyz", timeout=5)
    return response.json()["model"]["version"] if response.status_code == 200 else None


def test_parity_with_the_trainer_and_accuracy_over_http(trained_model_dir, mnist_dir, serve):
    from mnist_trainer import MLP, data  # tests may use the trainer; the service never does

    test = data.load(mnist_dir).test
    server = serve(trained_model_dir)
    reference = MLP.from_artifact(trained_model_dir / "mnist" / "1")
    first = test.images[:1000]
    body = requests.post(server.url + "/v1/predict", json={"instances": first.reshape(1000, 784).tolist()},
                         timeout=60).json()
    served = np.array([p["probabilities"] for p in body["predictions"]])
    assert np.abs(served - reference.predict_proba(first)).max() <= 1e-6
    assert [p["label"] for p in body["predictions"]] == reference.predict(first).tolist()

    labels = []
    for start in range(0, 10_000, 1000):
        batch = test.images[start : start + 1000].reshape(-1, 784).tolist()
        response = requests.post(server.url + "/v1/predict", json={"instances": batch}, timeout=60)
        labels += [p["label"] for p in response.json()["predictions"]]
    accuracy = float((np.array(labels) == test.labels).mean())
    assert accuracy == reference.manifest["metrics"]["test"]["accuracy"]


def test_metric_totals_are_summed_over_workers(model_dir, serve):
    server = serve(model_dir, workers=2)

    def post(i: int) -> int:
        return requests.post(server.url + "/v1/predict", json={"instances": [digit(i).tolist()]},
                             timeout=10).status_code

    # Rounds of 8 concurrent requests until both workers have answered some: sequential requests
    # on an idle machine can all be accepted by the same worker.
    n = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):
            assert list(pool.map(post, range(n, n + 8))) == [200] * 8
            n += 8
            if wait_for(lambda: len(_answering_pids(server)) == 2, timeout=0.5):
                break
    assert len(_answering_pids(server)) == 2, "both workers should have answered"
    assert metric_total(server.url, "mnist_http_requests_total", route="/v1/predict", status="200") == n
    assert metric_total(server.url, "mnist_predictions_total") == n
    assert metric_total(server.url, "mnist_batch_size_count") == n
    assert metric_total(server.url, "mnist_model_info", version="1") == 1


def _answering_pids(server) -> set[int]:
    return {e["pid"] for e in server.logs() if e.get("route") == "/v1/predict"}


def test_promtool_accepts_the_metrics(model_dir, serve):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    server = serve(model_dir)
    requests.post(server.url + "/v1/predict", json={"instances": [digit().tolist()]}, timeout=10)
    requests.post(server.url + "/v1/predict", json={"instances": [[1]]}, timeout=10)
    exposition = requests.get(server.url + "/metrics", timeout=5).text
    check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check


def test_readiness_goes_from_503_to_200_when_a_version_appears(tmp_path, serve):
    models = tmp_path / "models"
    models.mkdir()
    server = serve(models)
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 503
    response = requests.post(server.url + "/v1/predict", json={"instances": [digit().tolist()]}, timeout=5)
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    write_version(models, 1)
    assert wait_for(lambda: all(serving_version(server.url) == 1 for _ in range(6)))
    assert requests.post(server.url + "/v1/predict", json={"instances": [digit().tolist()]},
                         timeout=5).status_code == 200


def test_hot_swap_under_concurrent_requests(model_dir, serve):
    server = serve(model_dir)
    pixels = [digit(s) for s in range(3)]
    want = {1: expected(model_dir, pixels, 1)}
    results, errors, stop = [], [], threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(server.url + "/v1/predict", json={"instances": [p.tolist() for p in pixels]},
                                 timeout=10)
                results.append((r.status_code, r.json()))
            except Exception as e:  # a dropped connection is a failure too
                errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    write_version(model_dir, 2, seed=42)
    want[2] = expected(model_dir, pixels, 2)
    assert wait_for(lambda: all(serving_version(server.url) == 2 for _ in range(6)))
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()

    assert errors == [] and len(results) > 50
    assert all(status == 200 for status, _ in results)
    seen = set()
    for _, body in results:  # every answer is wholly the work of the version it names
        version = body["model"]["version"]
        seen.add(version)
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], want[version], atol=1e-6)
    assert seen == {1, 2}


def test_an_invalid_version_is_rejected_while_the_old_one_serves(model_dir, serve):
    server = serve(model_dir)
    broken = write_version(model_dir, 2, seed=3)
    weights = broken / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # sha256 no longer matches
    weights.write_bytes(bytes(data))
    assert wait_for(lambda: metric_total(server.url, "mnist_model_load_failures_total") >= 2)  # each worker
    assert all(serving_version(server.url) == 1 for _ in range(6))
    rejected = [e for e in server.logs() if e.get("message") == "rejected model version"]
    assert rejected and rejected[0]["version"] == 2 and "sha256" in rejected[0]["reason"]
    time.sleep(1.0)  # further polls do not log the same rejection again
    assert len([e for e in server.logs() if e.get("message") == "rejected model version"]) == 2
    write_version(model_dir, 3, seed=4)
    assert wait_for(lambda: all(serving_version(server.url) == 3 for _ in range(6)))


def test_pinned_version_and_sighup_reload(model_dir, serve):
    write_version(model_dir, 2, seed=5)
    pinned = serve(model_dir, MODEL_VERSION=1)
    assert all(serving_version(pinned.url) == 1 for _ in range(4))

    server = serve(model_dir, MODEL_POLL_SECONDS=0)  # no polling: only SIGHUP brings v3 in
    assert serving_version(server.url) == 2
    write_version(model_dir, 3, seed=6)
    time.sleep(0.5)
    assert serving_version(server.url) == 2
    server.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: all(serving_version(server.url) == 3 for _ in range(6)))


def test_one_json_log_line_per_request_without_payload(model_dir, serve):
    server = serve(model_dir)
    secret = digit(1).reshape(-1).tolist()
    requests.post(server.url + "/v1/predict", json={"instances": [secret, secret]},
                  headers={"X-Request-ID": "req-42"}, timeout=10)
    assert wait_for(lambda: any(e.get("request_id") == "req-42" for e in server.logs()))
    entry = next(e for e in server.logs() if e.get("request_id") == "req-42")
    assert entry["route"] == "/v1/predict" and entry["status"] == 200 and entry["method"] == "POST"
    assert entry["batch_size"] == 2 and entry["model_version"] == 1 and entry["latency_ms"] > 0
    assert json.dumps(secret[200:230])[1:-1] not in server.log_path.read_text()


def test_bad_input_never_kills_a_worker(model_dir, serve):
    server = serve(model_dir)
    bad = [
        dict(data=bomb_png(), headers={"Content-Type": "image/png"}),
        dict(data=b"[" * 200_000, headers={"Content-Type": "application/json"}),
        dict(json={"instances": [[0] * 1_000_000]}),
        dict(data=b"\0" * (9 * 1024 * 1024), headers={"Content-Type": "application/json"}),
    ]
    for kwargs in bad:
        response = requests.post(server.url + "/v1/predict", timeout=30, **kwargs)
        assert 400 <= response.status_code < 500 and "error" in response.json()
    assert requests.post(server.url + "/v1/predict", json={"instances": [digit().tolist()]},
                         timeout=10).status_code == 200
    text = server.log_path.read_text()
    assert "Worker exiting" not in text and "exited with code" not in text and "Traceback" not in text


def _chunked(data: bytes, size: int = 4096):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    return (data[i : i + size] for i in range(0, len(data), size))


def test_chunked_bodies_have_the_same_size_limit(model_dir, serve):
    limit = 20_000
    server = serve(model_dir, MAX_BODY_BYTES=str(limit))
    instance = json.dumps({"instances": [digit(3).reshape(-1).tolist()]}).encode()
    exactly = instance + b" " * (limit - len(instance))  # JSON allows trailing whitespace
    json_type = {"Content-Type": "application/json"}

    at_limit = requests.post(server.url + "/v1/predict", data=_chunked(exactly), headers=json_type, timeout=10)
    assert at_limit.status_code == 200
    served = np.array(at_limit.json()["predictions"][0]["probabilities"])
    assert np.abs(served - expected(model_dir, digit(3))[0]).max() <= 1e-6

    image = png(digit(3)) + b"\0" * limit  # bytes after a PNG's end are ignored by decoders
    over = {"/v1/predict": (exactly + b" ", json_type),
            "/v1/models/mnist:predict": (exactly + b" ", json_type),
            "/v2/models/mnist/infer": (exactly + b" ", json_type),
            "/v1/predict?preprocess=none": (image, {"Content-Type": "image/png"})}
    for path, (body, headers) in over.items():
        response = requests.post(server.url + path, data=_chunked(body), headers=headers, timeout=10)
        assert response.status_code == 413, (path, response.text)
        error = response.json()["error"]
        assert (error if path.startswith("/v2") else error["message"]) == "request body is larger than MAX_BODY_BYTES"


def test_sigterm_drains_in_flight_requests(model_dir, serve):
    server = serve(model_dir)
    dark_on_white = base64.b64encode(png(255 - np.kron(digit(), np.ones((10, 10), np.uint8)))).decode()
    body = {"instances": [{"b64": dark_on_white}] * 1000}  # a second or more of image preprocessing
    answers = []
    request = threading.Thread(target=lambda: answers.append(
        requests.post(server.url + "/v1/predict", json=body, timeout=60)))
    request.start()
    in_flight = lambda: metric_total(server.url, "mnist_http_requests_in_flight")  # noqa: E731
    assert wait_for(lambda: in_flight() >= 2, interval=0.02)  # the big request and this scrape
    assert server.stop() == 0  # SIGTERM while the request is being answered
    request.join()
    assert answers[0].status_code == 200 and len(answers[0].json()["predictions"]) == 1000
    assert Model.load(model_dir / "mnist" / "1")  # the service only reads MODEL_DIR


def test_container_healthcheck_follows_readiness_of_http_and_grpc(tmp_path, serve):
    models = tmp_path / "models"
    models.mkdir()
    server = serve(models, grpc_workers=1)

    def healthcheck(grpc_port=server.grpc_port):
        environment = {**os.environ, "PORT": str(server.port), "GRPC_PORT": str(grpc_port)}
        return subprocess.run([sys.executable, "-m", "mnist_service.healthcheck"], capture_output=True,
                              env=environment, timeout=10).returncode

    assert healthcheck() == 1
    write_version(models, 1)
    assert wait_for(lambda: all(serving_version(server.url) == 1 for _ in range(6)))
    assert wait_for(lambda: healthcheck() == 0)
    assert healthcheck(grpc_port=free_port()) == 1  # nothing answers gRPC there
    assert healthcheck(grpc_port=0) == 0  # gRPC off: HTTP alone
