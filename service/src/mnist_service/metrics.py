"""Prometheus metrics. Under gunicorn they live in PROMETHEUS_MULTIPROC_DIR (multiprocess mode,
chosen by prometheus_client at import time from the environment), so /metrics sums all workers.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# The service answers in about a millisecond: the default buckets (from 5 ms) would hide it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)

# model_version: the version that answered ("" when none did: the request failed before a model was
# picked), so that dashboards and alerts can put a canary beside the stable version.
# protocol: "http", or "grpc" for the gRPC server's RPCs (route: the full method name, method: POST,
# status: the gRPC status code's name, e.g. OK, INVALID_ARGUMENT).
REQUESTS = Counter("mnist_http_requests", "Requests answered (HTTP, and gRPC RPCs).",
                   ["route", "method", "status", "model_version", "protocol"])
REQUEST_LATENCY = Histogram("mnist_http_request_duration_seconds", "Time to answer a request (HTTP, or a gRPC RPC).",
                            ["route", "model_version", "protocol"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("mnist_http_requests_in_flight", "Requests being answered (HTTP, and gRPC RPCs).",
                  multiprocess_mode="livesum")
INFERENCE_LATENCY = Histogram("mnist_inference_duration_seconds", "Time of the forward pass of one batch.",
                              ["model_version"], buckets=INFERENCE_BUCKETS)
BATCH_SIZE = Histogram("mnist_batch_size", "Instances per prediction request.", buckets=BATCH_BUCKETS)
PREDICTIONS = Counter("mnist_predictions", "Predicted labels.", ["label", "model_version"])
CONFIDENCE = Histogram("mnist_prediction_confidence", "Probability of the predicted label (a drift signal).",
                       ["model_version"], buckets=CONFIDENCE_BUCKETS)
MODEL_INFO = Gauge("mnist_model_info", "1 for each model version a worker serves unasked (default and canary).",
                   ["name", "version", "sha256"], multiprocess_mode="livemax")
MODEL_LABEL_INFO = Gauge("mnist_model_label_info", "1 for each label and the valid version it points at.",
                         ["model_label", "model_version"], multiprocess_mode="livemax")
CANARY_PERCENT = Gauge("mnist_model_canary_percent", "Share of unlabelled requests sent to the canary (percent).",
                       multiprocess_mode="livemax")
LABELS_REJECTED = Counter("mnist_model_labels_rejected", "Labels ignored: their version is missing or invalid "
                          '(model_label="*": labels.json itself is invalid).', ["model_label"])
AUTH_FAILURES = Counter("mnist_auth_failures", "Requests refused 401: no API key, or not a valid one "
                        "(API_KEYS_FILE).", ["route", "reason"])
SHED = Counter("mnist_http_requests_shed", "Inference requests answered 503 (gRPC: RESOURCE_EXHAUSTED) at once: "
               "they had waited longer than QUEUE_TIMEOUT (QUEUE_TIMEOUT_MAX under a crowd). Also counted in "
               "mnist_http_requests_total.",
               ["route"])
CLIENT_TIMEOUTS = Counter("mnist_client_timeouts", "Connections closed because the client was slower than "
                          "CLIENT_TIMEOUT to send its request or read the answer.")
MODEL_LOADS = Counter("mnist_model_loads", "Model versions loaded and verified.")
MODEL_LOAD_FAILURES = Counter("mnist_model_load_failures", "Model versions rejected as invalid.")
REPOSITORY_REQUESTS = Counter("mnist_model_repository_requests", "Requests sent to an S3 model repository, "
                              "by S3 operation (ListObjectsV2, GetObject).", ["operation"])
REPOSITORY_ERRORS = Counter("mnist_model_repository_errors", "Failed reads of the model repository (unreachable, "
                            "denied, throttled); what serves keeps serving.", ["operation"])

# Each process scores its own window (dataplane/drift.py); the highest score among the live ones is shown.
DRIFT_SCORE = Gauge("mnist_drift_score", "Population stability index of the last DRIFT_WINDOW instances of a "
                    "process against the version's reference profile, per signal (> 0.25: drift).",
                    ["model_version", "signal"], multiprocess_mode="livemax")
PAYLOAD_EVENTS = Counter("mnist_payload_events", "Payload log events by outcome: sent, failed (refused or not "
                         "answered after the retries), dropped (queue full, or no time left at shutdown), "
                         "sampled_out, skipped (a failed request, PAYLOAD_LOG_FAILED=false).", ["type", "outcome"])
PAYLOAD_QUEUE_EVENTS = Gauge("mnist_payload_queue_events", "Payload log events held: waiting to be sent, or "
                             "being sent.", multiprocess_mode="livesum")
PAYLOAD_QUEUE_BYTES = Gauge("mnist_payload_queue_bytes", "Bytes of payload held by the events of "
                            "mnist_payload_queue_events.", multiprocess_mode="livesum")


def exposition() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics (or this process's, outside gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()  # fresh each scrape; the app's own metrics are never registered here
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Children of labelled metrics, looked up once instead of on every request.
_REQUESTS: dict[tuple, Counter] = {}
_LATENCY: dict[tuple[str, str, str], Histogram] = {}
_BY_VERSION: dict[str, tuple[Histogram, Histogram, list[Counter]]] = {}  # inference, confidence, predicted


def observe_request(route: str, method: str, status: int | str, seconds: float, version: str = "",
                    protocol: str = "http") -> None:
    key = (route, method, status, version, protocol)
    counter = _REQUESTS.get(key)
    if counter is None:
        counter = _REQUESTS[key] = REQUESTS.labels(route, method, str(status), version, protocol)
    counter.inc()
    histogram = _LATENCY.get((route, version, protocol))
    if histogram is None:
        histogram = _LATENCY[route, version, protocol] = REQUEST_LATENCY.labels(route, version, protocol)
    histogram.observe(seconds)


def _version_metrics(version: str) -> tuple[Histogram, Histogram, list[Counter]]:
    children = _BY_VERSION.get(version)
    if children is None:
        children = _BY_VERSION[version] = (INFERENCE_LATENCY.labels(version), CONFIDENCE.labels(version),
                                           [PREDICTIONS.labels(str(label), version) for label in range(10)])
    return children


def observe_inference(version: int, seconds: float, labels: np.ndarray, confidences: np.ndarray) -> None:
    inference, confidence, predicted = _version_metrics(str(version))
    inference.observe(seconds)
    BATCH_SIZE.observe(len(labels))
    if len(labels) == 1:  # the common case, without numpy's fixed costs
        predicted[int(labels[0])].inc()
    else:
        for label, count in enumerate(np.bincount(labels, minlength=10).tolist()):
            if count:
                predicted[label].inc(count)
    for c in confidences.tolist():
        confidence.observe(c)


def show_routing(routing, old) -> None:
    """The gauges of what serves: model info, labels and the canary's share (old series set to 0)."""
    if old is not None:
        for model in (old.default, old.canary):
            if model is not None:
                MODEL_INFO.labels(model.name, str(model.version), model.sha256).set(0)
        for label, model in old.labels.items():
            MODEL_LABEL_INFO.labels(label, str(model.version)).set(0)
    for model in (routing.default, routing.canary):
        if model is not None:
            MODEL_INFO.labels(model.name, str(model.version), model.sha256).set(1)
    for label, model in routing.labels.items():
        MODEL_LABEL_INFO.labels(label, str(model.version)).set(1)
    CANARY_PERCENT.set(routing.canary_percent)


@functools.cache
def _shed_counters(route: str, method: str) -> tuple:
    return SHED.labels(route), REQUESTS.labels(route, method, "503", "", "http")


def observe_shed(route: str, method: str) -> None:
    """Count a shed request (also in the requests total; not in the latency histogram: it did not run).
    Its counters are looked up once: a shed is meant to cost next to nothing."""
    for counter in _shed_counters(route, method):
        counter.inc()
