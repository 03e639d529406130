"""The service on a bucket (MODEL_DIR=s3://...), through a real gunicorn and a real S3 server over
HTTP (tests/s3_server.py): it serves, hot-swaps, pins and routes exactly as from a directory, and a
store that breaks, lies or goes away never costs a request."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import requests

from artifact_files import random_arrays
from mnist_artifact import Model, format
from mnist_artifact.repository import LocalRepository, open_repository, parse_location
from mnist_trainer.promote import remove_label, set_label
from service_helpers import digit, metric_total, wait_for

BODY = json.dumps({"instances": [digit().tolist()]}).encode()
JSON = {"Content-Type": "application/json"}


def publish(uri: str, seed: int) -> Model:
    """A new version with its own weights (a wrong version answers differently); returns it."""
    repository = open_repository(parse_location("MODEL_DIR", uri))
    arrays = random_arrays((784, 16, 10), seed)
    manifest = format.build_manifest("mnist", arrays, scale=1 / 255, mean=0.1307, std=0.3081,
                                     metrics={"validation": {"accuracy": 0.5, "loss": 1.0}})
    version = repository.publish("mnist", arrays, manifest)
    return Model(*repository.load("mnist", version))


def predict(url: str, path: str = "/v1/predict", session=requests) -> requests.Response:
    return session.post(url + path, data=BODY, headers=JSON, timeout=10)


def check_answer(response: requests.Response, model: Model) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["version"] == model.version
    expected = model.predict_proba(digit().astype(np.float32).reshape(1, 784))[0]
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], expected, atol=1e-6)


def serving(url: str) -> int | None:
    return requests.get(url + "/v1/models", timeout=5).json()["models"][0]["serving_version"]


def served_by_every_worker(url: str, version: int) -> bool:
    """Several answers in a row name `version` (each new connection goes to either worker)."""
    return all(serving(url) == version for _ in range(8))


def test_a_bucket_serves_swaps_pins_and_routes_a_canary(s3_uri, serve, tmp_path):
    v1 = publish(s3_uri, seed=1)
    server = serve(s3_uri, MODEL_CACHE_DIR=tmp_path / "cache")
    assert requests.get(server.url + "/readyz", timeout=5).json()["model"]["version"] == 1
    check_answer(predict(server.url), v1)

    v2 = publish(s3_uri, seed=2)
    assert wait_for(lambda: served_by_every_worker(server.url, 2)), "version 2 was not swapped in"
    session = requests.Session()
    for _ in range(10):
        check_answer(predict(server.url, session=session), v2)
    check_answer(predict(server.url, "/v1/predict?version=1"), v1)
    assert requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]["versions"] == [1, 2]

    repository = open_repository(parse_location("MODEL_DIR", s3_uri))
    set_label(repository, "mnist", "stable", 1)
    set_label(repository, "mnist", "canary", 2, percent=50)
    assert wait_for(lambda: requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]["labels"]
                    == {"stable": 1, "canary": 2})
    seen = Counter(int(predict(server.url, session=session).headers["X-Model-Version"]) for _ in range(60))
    assert set(seen) == {1, 2}, seen
    remove_label(repository, "mnist", "canary")
    assert wait_for(lambda: all(predict(server.url, session=session).headers["X-Model-Version"] == "1"
                                for _ in range(10)))

    pinned = serve(s3_uri, MODEL_VERSION=2, MODEL_CACHE_DIR=tmp_path / "cache")
    check_answer(predict(pinned.url), v2)
    assert list((tmp_path / "cache" / "mnist").glob("*/2/weights.npz")), "versions are cached where told"
    requests_ = metric_total(server.url, "mnist_model_repository_requests_total", operation="ListObjectsV2")
    assert requests_ > 0 and metric_total(server.url, "mnist_model_repository_errors_total") == 0


def test_a_store_that_goes_away_costs_no_request(s3_uri, s3_server, serve):
    """Stopped while serving: every request is answered, one line per worker says so; started
    again: the service recovers within two polls and swaps in what was published meanwhile."""
    v1 = publish(s3_uri, seed=1)
    poll = 0.5
    server = serve(s3_uri, MODEL_POLL_SECONDS=poll)
    s3_server.stop()
    try:
        session = requests.Session()
        assert wait_for(lambda: metric_total(server.url, "mnist_model_repository_errors_total") >= 4, timeout=20)
        for _ in range(50):
            check_answer(predict(server.url, session=session), v1)
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    finally:
        s3_server.start()
    outage = [e for e in server.logs() if e.get("message") == "model repository unavailable; retrying every poll"]
    assert len(outage) == server.workers, outage  # one line per streak and worker, not one per poll
    assert "cannot reach the store" in outage[0]["reason"] and s3_uri in outage[0]["reason"]
    assert wait_for(lambda: len([e for e in server.logs() if e.get("message") == "model repository available again"])
                    == server.workers, timeout=2 * poll + 3.5)  # two polls, and botocore's retry backoff
    v2 = publish(s3_uri, seed=2)
    assert wait_for(lambda: served_by_every_worker(server.url, 2))
    check_answer(predict(server.url), v2)
    assert "Traceback" not in server.log_path.read_text()


def test_a_corrupted_version_is_refused_and_the_previous_keeps_serving(s3_uri, s3_server, serve, tmp_path):
    v1 = publish(s3_uri, seed=1)
    server = serve(s3_uri)
    # Version 2 as a faulty writer leaves it: a manifest whose weights' sha256 does not match.
    staged = LocalRepository(tmp_path / "staged")
    arrays = random_arrays((784, 16, 10), 2)
    staged.publish("mnist", arrays, format.build_manifest("mnist", arrays, scale=1 / 255, mean=0.1307, std=0.3081))
    s3, location = s3_server.client(), parse_location("MODEL_DIR", s3_uri)
    weights = (tmp_path / "staged" / "mnist" / "1" / format.WEIGHTS).read_bytes()
    manifest = json.loads((tmp_path / "staged" / "mnist" / "1" / format.MANIFEST).read_text())
    s3.put_object(Bucket=location.bucket, Key=f"{location.prefix}/mnist/2/{format.WEIGHTS}", Body=b"0" + weights[1:])
    s3.put_object(Bucket=location.bucket, Key=f"{location.prefix}/mnist/2/{format.MANIFEST}",
                  Body=json.dumps({**manifest, "version": 2}))
    assert wait_for(lambda: metric_total(server.url, "mnist_model_load_failures_total") >= server.workers)
    check_answer(predict(server.url), v1)
    assert serving(server.url) == 1
    rejected = [e for e in server.logs() if e.get("message") == "rejected model version"]
    assert rejected and f"{s3_uri}/mnist/2/weights.npz: sha256 does not match" in rejected[0]["reason"]
    assert predict(server.url, "/v1/predict?version=2").status_code == 404


def test_an_interrupted_upload_is_never_served(s3_uri, s3_server, serve):
    """A publisher that died after claiming version 2 and sending its weights, before the manifest."""
    publish(s3_uri, seed=1)
    server = serve(s3_uri)
    s3, location = s3_server.client(), parse_location("MODEL_DIR", s3_uri)
    s3.put_object(Bucket=location.bucket, Key=f"{location.prefix}/mnist/2/.claim", Body=b"{}")
    s3.put_object(Bucket=location.bucket, Key=f"{location.prefix}/mnist/2/{format.WEIGHTS}", Body=b"partial")
    polls = metric_total(server.url, "mnist_model_repository_requests_total", operation="ListObjectsV2")
    assert wait_for(lambda: metric_total(server.url, "mnist_model_repository_requests_total",
                                         operation="ListObjectsV2") >= polls + 4)
    assert serving(server.url) == 1 and metric_total(server.url, "mnist_model_load_failures_total") == 0
    assert requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]["versions"] == [1]
    v3 = publish(s3_uri, seed=3)  # the next publisher skips the claimed number
    assert v3.version == 3 and wait_for(lambda: serving(server.url) == 3)


def _not_ready_reason(server) -> str:
    response = requests.get(server.url + "/readyz", timeout=5)
    assert response.status_code == 503
    return response.json()["error"]["message"]


def test_wrong_credentials_keep_the_service_up_and_not_ready(s3_uri, serve):
    publish(s3_uri, seed=1)
    server = serve(s3_uri, AWS_SECRET_ACCESS_KEY="wrong", AWS_ACCESS_KEY_ID="AKIAWRONGKEY")
    bucket = parse_location("MODEL_DIR", s3_uri).bucket
    assert f"access to bucket '{bucket}' denied (InvalidAccessKeyId)" in _not_ready_reason(server)
    assert wait_for(lambda: metric_total(server.url, "mnist_model_repository_errors_total") >= 6)
    assert server.process.poll() is None  # no crash loop
    errors = [e for e in server.logs() if e.get("level") == "error"]
    assert len(errors) == server.workers and bucket in errors[0]["reason"]
    assert "Traceback" not in server.log_path.read_text()


def test_a_missing_bucket_is_named_and_the_service_stays_up(s3_uri, serve):
    server = serve("s3://no-such-bucket/models")
    assert "bucket 'no-such-bucket' does not exist" in _not_ready_reason(server)
    assert server.process.poll() is None and "Traceback" not in server.log_path.read_text()


def test_a_store_that_never_answers_does_not_hold_the_workers_boot(s3_uri, serve, monkeypatch):
    """A store that accepts connections and never answers (boto3 would wait 3 x 20 s): the workers
    boot within gunicorn's TIMEOUT anyway, not ready, and are not killed and rebooted."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts nor answers
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
        server = serve(s3_uri, TIMEOUT=6)
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 503
        booted = [e for e in server.logs() if e.get("message", "").startswith("Booting worker")]
        assert wait_for(lambda: False, timeout=7) is False  # past TIMEOUT: a held boot would be killed now
        assert [e for e in server.logs() if e.get("message", "").startswith("Booting worker")] == booted
        assert "WORKER TIMEOUT" not in server.log_path.read_text() and server.process.poll() is None
    finally:
        silent.close()


def test_a_store_unreachable_at_start_up_is_waited_for(s3_uri, s3_server, serve):
    v1 = publish(s3_uri, seed=1)
    s3_server.stop()
    try:
        server = serve(s3_uri, MODEL_POLL_SECONDS=0.5)
        assert "cannot reach the store" in _not_ready_reason(server)
    finally:
        s3_server.start()
    # every worker ready (each polls on its own), not just the one that answered first
    assert wait_for(lambda: len({e["pid"] for e in server.logs() if e.get("message") == "serving model version"})
                    == server.workers, timeout=15)
    check_answer(predict(server.url), v1)
