"""Prometheus metrics. Under gunicorn they live in PROMETHEUS_MULTIPROC_DIR (multiprocess mode,
chosen by prometheus_client at import time from the environment), so /metrics sums all workers.
"""

from __future__ import annotations

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

REQUESTS = Counter("mnist_http_requests", "HTTP requests answered.", ["route", "method", "status"])
REQUEST_LATENCY = Histogram("mnist_http_request_duration_seconds", "Time to answer an HTTP request.",
                            ["route"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("mnist_http_requests_in_flight", "HTTP requests being answered.",
                  multiprocess_mode="livesum")
INFERENCE_LATENCY = Histogram("mnist_inference_duration_seconds", "Time of the forward pass of one batch.",
                              buckets=INFERENCE_BUCKETS)
BATCH_SIZE = Histogram("mnist_batch_size", "Instances per prediction request.", buckets=BATCH_BUCKETS)
PREDICTIONS = Counter("mnist_predictions", "Predicted labels.", ["label"])
CONFIDENCE = Histogram("mnist_prediction_confidence", "Probability of the predicted label (a drift signal).",
                       buckets=CONFIDENCE_BUCKETS)
MODEL_INFO = Gauge("mnist_model_info", "1 for the model version a worker serves.", ["name", "version", "sha256"],
                   multiprocess_mode="livemax")
SHED = Counter("mnist_http_requests_shed", "Inference requests answered 503 at once: the worker was overloaded "
               "(QUEUE_LIMIT, QUEUE_TIMEOUT). Also counted in mnist_http_requests_total.", ["route"])
CLIENT_TIMEOUTS = Counter("mnist_client_timeouts", "Connections closed because the client was slower than "
                          "CLIENT_TIMEOUT to send its request or read the answer.")
MODEL_LOADS = Counter("mnist_model_loads", "Model versions loaded and verified.")
MODEL_LOAD_FAILURES = Counter("mnist_model_load_failures", "Model versions rejected as invalid.")


def exposition() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics (or this process's, outside gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()  # fresh each scrape; the app's own metrics are never registered here
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Children of labelled metrics, looked up once instead of on every request.
_PREDICTED = [PREDICTIONS.labels(str(label)) for label in range(10)]
_REQUESTS: dict[tuple[str, str, int], Counter] = {}
_LATENCY: dict[str, Histogram] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    counter = _REQUESTS.get(key)
    if counter is None:
        counter = _REQUESTS[key] = REQUESTS.labels(route, method, str(status))
    counter.inc()
    histogram = _LATENCY.get(route)
    if histogram is None:
        histogram = _LATENCY[route] = REQUEST_LATENCY.labels(route)
    histogram.observe(seconds)


def observe_predictions(labels: np.ndarray, confidences: np.ndarray) -> None:
    BATCH_SIZE.observe(len(labels))
    if len(labels) == 1:  # the common case, without numpy's fixed costs
        _PREDICTED[int(labels[0])].inc()
    else:
        for label, count in enumerate(np.bincount(labels, minlength=10).tolist()):
            if count:
                _PREDICTED[label].inc(count)
    for c in confidences.tolist():
        CONFIDENCE.observe(c)


def observe_shed(route: str, method: str) -> None:
    SHED.labels(route).inc()
    REQUESTS.labels(route, method, "503").inc()  # not in the latency histogram: no request was run
