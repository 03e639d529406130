"""Version labels (labels.json: stable, canary) through a real gunicorn: routing, the canary's share,
sticky clients, a rollback under load, labels the service must ignore, and per-version metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from mnist_artifact.repository import LocalRepository
from mnist_trainer.promote import set_label
from service_helpers import digit, metric_total, wait_for, write_version

BODY = json.dumps({"instances": [digit().tolist()]}).encode()
JSON = {"Content-Type": "application/json"}


def predict(url: str, path: str = "/v1/predict", session=requests, **headers) -> requests.Response:
    return session.post(url + path, data=BODY, headers={**JSON, **headers}, timeout=10)


def answered_by(response: requests.Response) -> tuple[int, str | None]:
    """(version, label) from the headers, checked against the /v1/predict body."""
    assert response.status_code == 200, response.text
    version, label = int(response.headers["X-Model-Version"]), response.headers.get("X-Model-Label")
    model = response.json()["model"]
    assert (model["version"], model.get("label")) == (version, label)
    return version, label


def write_labels(model_dir: Path, document, name: str = "mnist", mtime_ns: int | None = None) -> None:
    """labels.json as any writer might (atomically: a poll never reads half a file), with this mtime if given."""
    path = model_dir / name / "labels.json"
    staging = path.with_name(".labels-staging")
    staging.write_text(document if isinstance(document, str) else json.dumps(document))
    if mtime_ns is not None:
        os.utime(staging, ns=(mtime_ns, mtime_ns))
    os.replace(staging, path)


def promote(model_dir: Path, *args: str) -> None:
    """The real CLI, as an operator or the chart's promote job runs it."""
    result = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "promote", "--model-dir", str(model_dir),
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def routed(server, **describe) -> bool:
    """Every worker has logged a routing with these fields (store.py logs one on every change)."""
    pids = {e["pid"] for e in server.logs() if e.get("message") == "serving model version"
            and all(e.get(k) == v for k, v in describe.items())}
    return len(pids) >= server.workers


def versions(tmp_path: Path, *numbers: int) -> Path:
    models = tmp_path / "models"
    for v in numbers:
        write_version(models, v, seed=10 + v)  # different weights: a wrong version would answer differently
    return models


def test_a_stable_label_routes_unpinned_requests_and_can_be_asked_for(tmp_path, serve):
    """stable, not the highest version, answers by default; versions and labels can still be asked for."""
    models = versions(tmp_path, 1, 2, 3)
    set_label(LocalRepository(models), "mnist", "stable", 2)
    server = serve(models)

    for _ in range(6):  # both workers
        assert answered_by(predict(server.url)) == (2, "stable")
    assert answered_by(predict(server.url, "/v1/predict?version=3")) == (3, None)
    assert answered_by(predict(server.url, "/v1/predict?label=stable")) == (2, "stable")

    tf = predict(server.url, "/v1/models/mnist/labels/stable:predict")
    assert tf.status_code == 200 and tf.headers["X-Model-Version"] == "2"
    assert tf.headers["X-Model-Label"] == "stable"
    assert list(tf.json()) == ["predictions"] and len(tf.json()["predictions"]) == 1

    for path in ("/v1/predict?label=nope", "/v1/predict?label=Not%20A%20Label", "/v1/predict?label=canary",
                 "/v1/models/mnist/labels/nope:predict"):
        response = predict(server.url, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "label_not_found", path
        assert "X-Model-Version" not in response.headers
    both = predict(server.url, "/v1/predict?label=stable&version=1")
    assert both.status_code == 422 and both.json()["error"]["code"] == "invalid_request"

    listed = requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]
    assert listed["labels"] == {"stable": 2} and listed["canary_percent"] == 0
    assert listed["serving_version"] == 2 and listed["versions"] == [1, 2, 3]


def test_the_canary_takes_its_share_of_unpinned_requests(tmp_path, serve):
    """20 % of anonymous requests go to the canary, split on its own by each worker."""
    models = versions(tmp_path, 1, 2)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    set_label(LocalRepository(models), "mnist", "canary", 2, percent=20)
    server = serve(models)

    session, seen = requests.Session(), Counter()
    for _ in range(2000):
        seen[answered_by(predict(server.url, session=session))] += 1
    assert set(seen) == {(1, "stable"), (2, "canary")}, seen
    share = seen[2, "canary"] / 2000
    assert abs(share - 0.20) <= 0.03, seen  # 3.4 standard deviations of a binomial share at n=2000
    assert answered_by(predict(server.url, "/v1/predict?label=canary")) == (2, "canary")


def test_a_client_id_keeps_a_client_on_one_side_of_the_split(tmp_path, serve):
    """X-Client-Id decides the side, in every worker: a user does not flip between versions."""
    models = versions(tmp_path, 1, 2)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    set_label(LocalRepository(models), "mnist", "canary", 2, percent=20)
    server = serve(models)

    session, sides = requests.Session(), {}
    for i in range(40):
        client = f"user-{i}"
        answers = {answered_by(predict(server.url, session=session, **{"X-Client-Id": client}))
                   for _ in range(30)}
        assert len(answers) == 1, (client, answers)
        sides[client] = answers.pop()
    assert set(sides.values()) == {(1, "stable"), (2, "canary")}, sides


def test_rollback_of_a_canary_under_load_fails_no_request(tmp_path, serve):
    """Promoting and removing the canary with the CLI while clients send requests: no request fails,
    and once every worker follows the new labels, no request goes to an old version."""
    models = versions(tmp_path, 1, 2, 3)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    set_label(LocalRepository(models), "mnist", "canary", 2, percent=50)
    server = serve(models)
    answers, errors, stop = [], [], threading.Event()  # answers: (sent at, status, version)

    def client():
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = predict(server.url, session=session)
                answers.append((sent, r.status_code, int(r.headers.get("X-Model-Version", 0))))
            except Exception as e:  # a dropped connection is a failure too
                errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: {1, 2} <= {v for _, _, v in answers})
        promote(models, "--label", "stable", "--version", "3")
        assert wait_for(lambda: 3 in {v for _, _, v in answers[-20:]})
        promote(models, "--remove", "canary")
        assert wait_for(lambda: routed(server, default=3, canary=None))
        switched = time.monotonic()  # every worker routes to 3 alone: requests sent from now see it
        assert wait_for(lambda: sum(sent > switched for sent, _, _ in answers) >= 100)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert errors == [] and len(answers) > 200
    assert [a for a in answers if a[1] != 200] == []
    assert {v for _, _, v in answers} == {1, 2, 3}
    assert {v for sent, _, v in answers if sent > switched} == {3}
    listed = requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]
    assert listed["labels"] == {"stable": 3} and listed["canary_percent"] == 0


def test_labels_pointing_at_missing_or_corrupt_versions_are_ignored(tmp_path, serve):
    """A label is only followed to a valid version: else the highest valid one serves, unlabelled."""
    models = versions(tmp_path, 1, 2)
    weights = models / "mnist" / "2" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # sha256 no longer matches (before the server starts: never loaded)
    weights.write_bytes(bytes(data))
    write_labels(models, {"format_version": 1, "labels": {"stable": 9, "canary": 2}, "canary_percent": 50})
    server = serve(models)

    for _ in range(20):  # at 50 %, the canary would have been drawn
        assert answered_by(predict(server.url)) == (1, None)
    for label in ("stable", "canary"):
        response = predict(server.url, f"/v1/predict?label={label}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "label_not_found"
        assert metric_total(server.url, "mnist_model_labels_rejected_total", model_label=label) == 2  # per worker
    assert metric_total(server.url, "mnist_model_label_info", model_label="stable") == 0
    assert metric_total(server.url, "mnist_model_canary_percent") == 0
    listed = requests.get(server.url + "/v1/models", timeout=5).json()["models"][0]
    assert listed["labels"] == {} and listed["canary_percent"] == 0 and listed["serving_version"] == 1

    def ignored():
        return sorted((e["label"], e["version"]) for e in server.logs()
                      if e.get("message") == "ignored label: its version is missing or invalid")

    assert ignored() == [("canary", 2), ("canary", 2), ("stable", 9), ("stable", 9)]
    time.sleep(0.6)  # a few polls: each bad label is logged and counted once, not on every poll
    assert len(ignored()) == 4
    assert metric_total(server.url, "mnist_model_labels_rejected_total") == 4

    write_version(models, 9, seed=19)  # the label's version appears: it is followed
    assert wait_for(lambda: routed(server, default=9, labels={"stable": 9}))
    assert all(answered_by(predict(server.url)) == (9, "stable") for _ in range(6))


def test_an_invalid_labels_file_keeps_the_last_valid_labels(tmp_path, serve):
    """A broken labels.json must not send traffic elsewhere: the last valid labels keep routing."""
    models = versions(tmp_path, 1, 2)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    server = serve(models)
    assert all(answered_by(predict(server.url)) == (1, "stable") for _ in range(4))

    write_labels(models, {"labels": "nope"})
    assert wait_for(lambda: metric_total(server.url, "mnist_model_labels_rejected_total", model_label="*") == 2)
    assert all(answered_by(predict(server.url)) == (1, "stable") for _ in range(6))  # not 2, the highest
    rejected = [e for e in server.logs() if e.get("message") == "rejected labels file"]
    assert len(rejected) == 2 and "format_version" in rejected[0]["reason"]

    write_labels(models, "{not json")
    assert wait_for(lambda: metric_total(server.url, "mnist_model_labels_rejected_total", model_label="*") == 4)
    assert all(answered_by(predict(server.url)) == (1, "stable") for _ in range(6))

    write_labels(models, {"format_version": 1, "labels": {"stable": 2}})  # a valid file again is followed
    assert wait_for(lambda: routed(server, default=2, labels={"stable": 2}))
    assert all(answered_by(predict(server.url)) == (2, "stable") for _ in range(6))


def test_a_labels_change_with_an_unchanged_mtime_is_followed(tmp_path, serve):
    """Two promotions within one tick of a coarse file-system clock (ext4 on older kernels: a jiffy;
    some network file systems: a second) leave labels.json with the same mtime: the second must
    still be seen."""
    models = versions(tmp_path, 1, 2)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    server = serve(models)
    assert all(answered_by(predict(server.url)) == (1, "stable") for _ in range(4))

    same_tick = (models / "mnist" / "labels.json").stat().st_mtime_ns
    write_labels(models, {"format_version": 1, "labels": {"stable": 2}, "canary_percent": 0}, mtime_ns=same_tick)
    assert wait_for(lambda: routed(server, default=2, labels={"stable": 2}), timeout=2)


def test_metrics_are_per_version_and_show_the_labels(tmp_path, serve):
    """Dashboards put the canary beside stable: every inference metric carries model_version, and the
    label gauges show where each label points (0 once it points elsewhere)."""
    models = versions(tmp_path, 1, 2)
    set_label(LocalRepository(models), "mnist", "stable", 1)
    set_label(LocalRepository(models), "mnist", "canary", 2, percent=25)
    server = serve(models)

    for path, times in (("/v1/predict?version=1", 5), ("/v1/predict?version=2", 3), ("/v1/predict?label=canary", 1),
                        ("/v1/models/mnist/labels/stable:predict", 2)):
        for _ in range(times):
            assert predict(server.url, path).status_code == 200
    assert predict(server.url, "/v1/predict?version=7").status_code == 404  # no version answered

    def total(name: str, **labels) -> float:
        return metric_total(server.url, name, **labels)

    route = "/v1/predict"
    assert total("mnist_http_requests_total", route=route, status="200", model_version="1") == 5
    assert total("mnist_http_requests_total", route=route, status="200", model_version="2") == 4
    assert total("mnist_http_requests_total", route=route, status="404", model_version="") == 1
    tf_route = "/v1/models/<name>/labels/<label>:predict"
    assert total("mnist_http_requests_total", route=tf_route, status="200", model_version="1") == 2
    assert total("mnist_http_request_duration_seconds_count", route=route, model_version="2") == 4
    for version, n in (("1", 7), ("2", 4)):
        assert total("mnist_predictions_total", model_version=version) == n
        assert total("mnist_prediction_confidence_count", model_version=version) == n
        assert total("mnist_inference_duration_seconds_count", model_version=version) == n
    assert total("mnist_model_label_info", model_label="stable", model_version="1") == 1
    assert total("mnist_model_label_info", model_label="canary", model_version="2") == 1
    assert total("mnist_model_canary_percent") == 25
    _check_with_promtool(requests.get(server.url + "/metrics", timeout=5).text)

    set_label(LocalRepository(models), "mnist", "stable", 2)
    promote(models, "--remove", "canary")
    assert wait_for(lambda: routed(server, default=2, canary=None))
    assert total("mnist_model_label_info", model_label="stable", model_version="2") == 1
    assert total("mnist_model_label_info", model_label="stable", model_version="1") == 0
    assert total("mnist_model_label_info", model_label="canary", model_version="2") == 0
    assert total("mnist_model_canary_percent") == 0


def _check_with_promtool(exposition: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (Debian package prometheus)")
        return  # the rest of the test stands without it
    check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check


def test_versions_asked_for_are_cached_least_recently_used_first(tmp_path):
    """?version=N keeps the versions clients keep asking for loaded: the least recently used goes."""
    from mnist_service import metrics
    from mnist_service.dataplane.store import ModelStore

    models = versions(tmp_path, 1, 2, 3, 4)
    store = ModelStore(LocalRepository(models), "mnist", cache_size=2)
    store.refresh()  # serves 4
    loads = metrics.MODEL_LOADS._value.get()
    for version in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes in
        assert store.get(version).version == version
    assert metrics.MODEL_LOADS._value.get() - loads == 3
    store.get(1)
    assert metrics.MODEL_LOADS._value.get() - loads == 3  # still cached
    store.get(2)
    assert metrics.MODEL_LOADS._value.get() - loads == 4  # evicted, loaded again
