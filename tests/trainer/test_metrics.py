import json

import numpy as np
import pytest

from mnist_trainer.metrics import classification_report, confusion_matrix


def test_confusion_matrix_of_a_hand_checked_example():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0, 2])
    expected = [[1, 1, 0],
                [0, 2, 0],
                [1, 0, 2]]
    matrix = confusion_matrix(labels, predictions, n_classes=3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)


def test_confusion_matrix_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=2000)
    predictions = rng.integers(0, 10, size=2000)
    expected = np.zeros((10, 10), dtype=np.int64)
    for true, predicted in zip(labels, predictions):
        expected[true, predicted] += 1
    np.testing.assert_array_equal(confusion_matrix(labels, predictions), expected)


def test_confusion_matrix_rejects_out_of_range_and_mismatched_inputs():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 10]), np.array([0, 1]))
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]))


@pytest.mark.filterwarnings("error")
def test_classes_never_predicted_or_never_present_score_zero_without_warnings():
    # Class 2 is present but never predicted; class 3 is neither present nor predicted.
    labels = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 0])
    per_class = classification_report(labels, predictions, n_classes=4)["per_class"]

    assert per_class[0] == pytest.approx(
        {"label": 0, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per_class[1] == pytest.approx(
        {"label": 1, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert per_class[2] == {"label": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_class[3] == {"label": 3, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_report_accuracy_and_confusion_matrix():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    predictions = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8])
    report = classification_report(labels, predictions)
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["confusion_matrix"] == confusion_matrix(labels, predictions).tolist()
    assert [c["label"] for c in report["per_class"]] == list(range(10))


def test_report_is_plain_json():
    rng = np.random.default_rng(1)
    report = classification_report(rng.integers(0, 10, 500), rng.integers(0, 10, 500))
    assert json.loads(json.dumps(report)) == report
    assert type(report["accuracy"]) is float
    assert type(report["confusion_matrix"][0][0]) is int
    assert type(report["per_class"][0]["support"]) is int
    assert type(report["per_class"][0]["f1"]) is float
