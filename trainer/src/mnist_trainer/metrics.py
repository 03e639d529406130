"""Classification metrics for digit predictions: confusion matrix and a per-class report."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts of (true, predicted) pairs: int64 (n_classes, n_classes), rows true, columns predicted."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes})")
    # Each (true, predicted) pair maps to one flat cell index, so a single bincount counts them all.
    counts = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _safe_ratio(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """numerators / denominators, with 0.0 wherever the denominator is zero."""
    out = np.zeros(numerators.shape, dtype=np.float64)
    np.divide(numerators, denominators, out=out, where=denominators > 0)
    return out


def classification_report(labels: np.ndarray, predictions: np.ndarray, n_classes: int = 10) -> dict:
    """Accuracy, confusion matrix and per-class precision/recall/F1/support as plain Python values."""
    confusion = confusion_matrix(labels, predictions, n_classes)
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    precision = _safe_ratio(true_positives, confusion.sum(axis=0))
    recall = _safe_ratio(true_positives, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    total = int(confusion.sum())
    per_class = [
        {
            "label": k,
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k in range(n_classes)
    ]
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
    }
