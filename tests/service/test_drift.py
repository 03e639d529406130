"""Drift statistics: each process scores a sliding window of what its versions are asked against
the version's reference profile (dataplane/drift.py), and /metrics shows the highest score of the
live processes, gunicorn's workers and the gRPC process alike."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton

from mnist_artifact import Model
from mnist_artifact.profile import SIGNALS
from mnist_service.dataplane.drift import BATCH, DriftMonitor
from service_helpers import add_profile, metric_total, varied_digits, write_version

WINDOW = 256
ALARM = 0.25  # docker/prometheus-rules.yml, MnistInputDrift


@pytest.fixture
def profiled(tmp_path):
    """A model directory whose version 1 has a reference profile of 2,000 varied digits; version 2 has none."""
    add_profile(write_version(tmp_path, 1), varied_digits(2000, seed=1))
    write_version(tmp_path, 2, seed=1)
    return tmp_path


def feed(monitor: DriftMonitor, model: Model, pixels: np.ndarray, one_by_one: bool = True) -> None:
    probabilities = model.predict_proba(pixels)
    if one_by_one:
        for i in range(len(pixels)):
            monitor.observe(model, pixels[i:i + 1], probabilities[i:i + 1])
    else:
        monitor.observe(model, pixels, probabilities)


def test_the_same_traffic_scores_low_and_a_shift_scores_high(profiled):
    model = Model.load(profiled / "mnist/1")
    monitor = DriftMonitor(WINDOW)
    feed(monitor, model, varied_digits(WINDOW - BATCH, seed=2))
    assert monitor.windows[1].scores() is None  # not full yet: no score
    feed(monitor, model, varied_digits(BATCH, seed=3))
    same = monitor.windows[1].scores()
    assert set(same) == set(SIGNALS) and max(same.values()) < 0.1, same
    feed(monitor, model, 255 - varied_digits(WINDOW // 2, seed=4))  # inverted: half the window
    shifted = monitor.windows[1].scores()
    assert shifted["intensity"] > ALARM and shifted["ink"] > ALARM, shifted


def test_one_by_one_the_window_is_what_one_batch_makes_it(profiled):
    model = Model.load(profiled / "mnist/1")
    pixels = np.concatenate([varied_digits(300, seed=5), 255 - varied_digits(100, seed=6)])
    single, batched = DriftMonitor(WINDOW), DriftMonitor(WINDOW)
    feed(single, model, pixels)
    # One by one, the last instances wait in a batch of BATCH: the window lags by less than BATCH.
    feed(batched, model, pixels[:len(pixels) - len(pixels) % BATCH], one_by_one=False)
    assert single.windows[1].scores() == batched.windows[1].scores()


def test_a_version_without_a_profile_or_a_window_of_zero_has_no_scores(profiled):
    monitor = DriftMonitor(WINDOW)
    feed(monitor, Model.load(profiled / "mnist/2"), varied_digits(WINDOW), one_by_one=False)
    assert monitor.windows == {}
    off = DriftMonitor(0)
    feed(off, Model.load(profiled / "mnist/1"), varied_digits(WINDOW), one_by_one=False)
    assert off.windows == {}


def test_metrics_show_the_highest_score_of_the_workers_and_the_grpc_process(profiled, serve):
    server = serve(profiled, workers=1, grpc_workers=1, DRIFT_WINDOW=str(WINDOW), MODEL_VERSION="1")

    def score(signal: str) -> float:
        return metric_total(server.url, "mnist_drift_score", model_version="1", signal=signal)

    assert "mnist_drift_score{" not in requests.get(server.url + "/metrics", timeout=5).text
    normal = varied_digits(WINDOW, seed=7)
    assert requests.post(server.url + "/v1/predict", json={"instances": normal.tolist()},
                         timeout=10).status_code == 200
    assert 0 < max(score(signal) for signal in SIGNALS) < 0.1
    inverted = (255 - varied_digits(WINDOW, seed=8)).astype(np.uint8)
    tensor = triton.InferInput("images", list(inverted.shape), "UINT8")
    tensor.set_data_from_numpy(inverted)
    triton.InferenceServerClient(server.grpc_target).infer("mnist", [tensor])
    assert score("intensity") > ALARM and score("ink") > ALARM  # the gRPC process's window, the highest
