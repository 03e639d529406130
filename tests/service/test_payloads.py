"""Payload logging through a real mnist-serve (gunicorn's gevent workers and the gRPC process):
events received by a CloudEvents receiver that parses them with the SDK (tests/event_sink.py),
a sink that is down or slow, and JSON Lines files in a directory and in a bucket (moto's server).

Whatever the sink does, every inference request is answered, and every event is counted under
exactly one outcome: sent + failed + dropped + sampled_out + skipped + queued = requests x events."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from cloudevents.http import from_json

from event_sink import CloudEventsSink
from service_helpers import digit, metric_total, png, wait_for

REQUEST_TYPE, RESPONSE_TYPE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
OUTCOMES = ("sent", "failed", "dropped", "sampled_out", "skipped")


@pytest.fixture
def sink():
    sink = CloudEventsSink()
    yield sink
    sink.close()


def predict(server, instances=None, **kwargs) -> requests.Response:
    body = {"instances": instances if instances is not None else [digit().tolist()]}
    return requests.post(server.url + "/v1/predict", json=body, timeout=10, **kwargs)


def outcomes(server) -> dict[str, float]:
    counted = {outcome: metric_total(server.url, "mnist_payload_events_total", outcome=outcome) for outcome in OUTCOMES}
    return counted | {"queued": metric_total(server.url, "mnist_payload_queue_events")}


def by_id(events) -> dict[str, dict[str, object]]:
    pairs: dict[str, dict[str, object]] = {}
    for event in events:
        pairs.setdefault(event["id"], {})[event["type"]] = event
    return pairs


def test_every_route_and_rpc_is_logged_as_kserve_events(model_dir, serve, sink):
    server = serve(model_dir, grpc_workers=1, PAYLOAD_LOG_URL=sink.url, POD_NAMESPACE="team-a")
    before = time.time()
    image = digit()
    assert predict(server, headers={"X-Request-ID": "from-the-caller"}).status_code == 200
    assert requests.post(server.url + "/v1/predict", data=png(image), headers={"Content-Type": "image/png"},
                         timeout=10).status_code == 200
    v2 = {"id": "v2-own-id", "inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32",
                                         "data": (image / 255).ravel().tolist()}]}
    answer = requests.post(server.url + "/v2/models/mnist/infer", json=v2, timeout=10)
    assert answer.status_code == 200
    tensor = triton.InferInput("images", [1, 784], "UINT8")
    tensor.set_data_from_numpy(image.reshape(1, 784))
    triton.InferenceServerClient(server.grpc_target).infer("mnist", [tensor], request_id="grpc-own-id")
    assert predict(server, instances=[[1, 2, 3]]).status_code == 422

    assert wait_for(lambda: len(sink.received()) == 10, 10), sink.received()
    assert sink.errors == []
    pairs = by_id(sink.received())
    assert len(pairs) == 5 and all(set(pair) == {REQUEST_TYPE, RESPONSE_TYPE} for pair in pairs.values())
    assert {"from-the-caller", "v2-own-id", "grpc-own-id"} <= set(pairs)
    for pair in pairs.values():
        request, response = pair[REQUEST_TYPE], pair[RESPONSE_TYPE]
        assert request["time"] == response["time"] and before - 1 < _epoch(request["time"]) < time.time()
        for event in (request, response):
            assert event["specversion"] == "1.0" and event["inferenceservicename"] == "mnist"
            assert event["namespace"] == "team-a" and event["component"] == "predictor"
            assert event["endpoint"] == "default" and event["source"].startswith("urn:mnist-mlp:")
    grpc_pair = pairs["grpc-own-id"]
    assert grpc_pair[REQUEST_TYPE]["protocol"] == "grpc" and grpc_pair[REQUEST_TYPE]["status"] == "OK"
    assert pairs["from-the-caller"][REQUEST_TYPE]["protocol"] == "http"
    assert pairs["from-the-caller"][RESPONSE_TYPE]["status"] == "200"
    assert pairs["from-the-caller"][RESPONSE_TYPE]["modelversion"] == "1"

    # The request event's data is an Open Inference Protocol request that gets the same answer again.
    replayed = requests.post(server.url + "/v2/models/mnist/infer", json=pairs["v2-own-id"][REQUEST_TYPE].data,
                             timeout=10).json()
    logged = pairs["v2-own-id"][RESPONSE_TYPE].data
    assert replayed["outputs"] == logged["outputs"] == answer.json()["outputs"]
    assert pairs["grpc-own-id"][REQUEST_TYPE].data["inputs"][0]["datatype"] == "UINT8"
    assert pairs["grpc-own-id"][REQUEST_TYPE].data["inputs"][0]["data"] == image.ravel().tolist()

    failed = [pair for pair in pairs.values() if pair[RESPONSE_TYPE]["status"] == "422"]
    assert len(failed) == 1
    assert failed[0][REQUEST_TYPE]["dataomitted"] == "undecoded" and failed[0][REQUEST_TYPE].data is None
    assert "784" in failed[0][RESPONSE_TYPE].data["error"]
    assert outcomes(server) == {"sent": 10, "failed": 0, "dropped": 0, "sampled_out": 0, "skipped": 0, "queued": 0}


def _epoch(text: str) -> float:
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + text[19:-1])


def test_sampling_keeps_a_request_and_its_response_together(model_dir, serve, sink):
    server = serve(model_dir, workers=1, PAYLOAD_LOG_URL=sink.url, PAYLOAD_LOG_SAMPLE_RATE="0.5",
                   PAYLOAD_LOG_EVENTS="all")
    for i in range(200):
        assert predict(server, headers={"X-Request-ID": f"request-{i}"}).status_code == 200
    assert wait_for(lambda: outcomes(server)["sent"] + outcomes(server)["sampled_out"] == 400)
    pairs = by_id(sink.received())
    assert all(len(pair) == 2 for pair in pairs.values())
    assert 60 < len(pairs) < 140  # about half: the decision is a hash of the id, the same in every process
    assert outcomes(server)["sampled_out"] == 2 * (200 - len(pairs))


def test_operators_choose_events_failed_requests_and_data(model_dir, serve, sink):
    server = serve(model_dir, workers=1, PAYLOAD_LOG_URL=sink.url, PAYLOAD_LOG_EVENTS="response",
                   PAYLOAD_LOG_FAILED="false", PAYLOAD_LOG_DATA="false")
    assert predict(server).status_code == 200
    assert predict(server, instances=[[1]]).status_code == 422
    assert wait_for(lambda: len(sink.received()) == 1)
    (event,) = sink.received()
    assert event["type"] == RESPONSE_TYPE and event.data is None and event["dataomitted"] == "setting"
    assert outcomes(server) == {"sent": 1, "failed": 0, "dropped": 0, "sampled_out": 0, "skipped": 1, "queued": 0}


def test_an_event_over_the_size_limit_goes_without_its_data(model_dir, serve, sink):
    server = serve(model_dir, workers=1, PAYLOAD_LOG_URL=sink.url, PAYLOAD_LOG_MAX_EVENT_BYTES="2000")
    assert predict(server, instances=[digit().tolist()] * 4).status_code == 200
    assert wait_for(lambda: len(sink.received()) == 2)
    pair = by_id(sink.received()).popitem()[1]
    assert pair[REQUEST_TYPE].data is None and pair[REQUEST_TYPE]["dataomitted"] == "size"
    assert len(pair[RESPONSE_TYPE].data["outputs"][1]["data"]) == 4  # the response is small enough


def test_a_dead_sink_fails_no_request_and_every_event_is_counted(model_dir, serve, tmp_path):
    dead = CloudEventsSink()
    dead.close()  # nothing listens on its port any more: connections are refused
    server = serve(model_dir, PAYLOAD_LOG_URL=dead.url, PAYLOAD_LOG_QUEUE_EVENTS="40", PAYLOAD_LOG_RETRIES="1")
    answers = [predict(server).status_code for _ in range(300)]
    assert answers == [200] * 300
    assert wait_for(lambda: outcomes(server)["queued"] == 0)
    counted = outcomes(server)
    assert counted["sent"] == 0 and counted["failed"] > 0 and counted["dropped"] > 0
    assert sum(counted.values()) == 600
    failing = [line for line in server.logs() if line.get("message", "").startswith("payload sink failing")]
    assert 1 <= len(failing) <= 2  # one line per worker for the streak, not one per event


def test_a_slow_sink_slows_no_request_and_its_queue_stays_bounded(model_dir, serve):
    slow = CloudEventsSink(delay=3)
    try:
        server = serve(model_dir, workers=1, PAYLOAD_LOG_URL=slow.url, PAYLOAD_LOG_TIMEOUT="0.5",
                       PAYLOAD_LOG_RETRIES="0", PAYLOAD_LOG_QUEUE_EVENTS="20")
        started = time.monotonic()
        answers = [predict(server).status_code for _ in range(200)]
        assert answers == [200] * 200 and time.monotonic() - started < 10
        assert metric_total(server.url, "mnist_payload_queue_events") <= 20
        assert wait_for(lambda: outcomes(server)["queued"] == 0, 20)
        counted = outcomes(server)
        assert counted["dropped"] > 0 and counted["failed"] > 0 and sum(counted.values()) == 400
        server.stop()
    finally:
        slow.close()


def _read_lines(blobs: list[bytes]) -> list:
    return [from_json(line) for blob in blobs for line in gzip.decompress(blob).splitlines()]


def test_json_lines_files_in_a_directory_are_flushed_at_shutdown(model_dir, serve, tmp_path):
    logs = tmp_path / "payloads"
    server = serve(model_dir, workers=2, grpc_workers=1, PAYLOAD_LOG_URL=str(logs), PAYLOAD_LOG_BATCH_EVENTS="50")
    for i in range(60):
        assert predict(server, headers={"X-Request-ID": f"file-{i}"}).status_code == 200
    assert server.stop() == 0  # graceful: each process writes what it holds before it leaves
    files = sorted(logs.rglob("*.jsonl.gz"))
    assert files and all(f.relative_to(logs).parts[0] == time.strftime("%Y", time.gmtime()) for f in files)
    events = _read_lines([f.read_bytes() for f in files])
    pairs = by_id(events)
    assert set(pairs) == {f"file-{i}" for i in range(60)}
    assert all(set(pair) == {REQUEST_TYPE, RESPONSE_TYPE} for pair in pairs.values())
    request = pairs["file-7"][REQUEST_TYPE]
    assert np.array_equal(request.data["inputs"][0]["data"], digit().ravel())


def test_json_lines_files_in_a_bucket(model_dir, serve, s3_server, s3_uri):
    bucket = s3_uri.removeprefix("s3://").split("/")[0]
    server = serve(model_dir, workers=1, PAYLOAD_LOG_URL=f"s3://{bucket}/payloads", PAYLOAD_LOG_BATCH_EVENTS="10",
                   **s3_server.env())
    for i in range(12):
        assert predict(server, headers={"X-Request-ID": f"s3-{i}"}).status_code == 200
    assert wait_for(lambda: outcomes(server)["sent"] >= 10)  # one file of 10 events while it serves
    assert server.stop() == 0
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="payloads/")["Contents"]]
    assert all(key.endswith(".jsonl.gz") for key in keys) and len(keys) >= 2
    events = _read_lines([client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys])
    assert sorted(by_id(events)) == sorted(f"s3-{i}" for i in range(12))
    assert json.loads(json.dumps(events[0].data))  # data is plain JSON
