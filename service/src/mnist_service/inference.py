"""The step every inference route shares: pick the model a request names, run it, record it."""

from __future__ import annotations

import re
import reprlib
import time

import numpy as np

from mnist_artifact import Model

from . import metrics, observe
from .errors import ApiError
from .store import ModelStore

VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() passes "²", which int() refuses


def check_name(store: ModelStore, name: str) -> None:
    if name != store.name:
        raise ApiError(404, "model_not_found", f"unknown model {reprlib.repr(name)}; this server serves {store.name!r}")


def pick_model(store: ModelStore, name: str | None = None, version: str | None = None) -> Model:
    """The version asked for, else the one serving now. 404 for another model's name or a version
    that is not on disk (or invalid), 503 when none is asked for and none serves yet."""
    if name is not None:
        check_name(store, name)
    if version is None:
        model = store.current
        if model is None:
            raise ApiError(503, "model_unavailable", store.not_ready_reason)
        return model
    number = VERSION.fullmatch(version)
    model = store.get(int(version)) if number else None
    if model is None:
        shown = version if number else reprlib.repr(version)
        raise ApiError(404, "version_not_found", f"model {store.name!r} has no valid version {shown}",
                       {"versions": store.versions()})
    return model


def run_model(model: Model, pixels: np.ndarray, environ: dict) -> np.ndarray:
    """The forward pass, timed and counted in the metrics and the access line."""
    started = time.perf_counter()
    probabilities = model.predict_proba(pixels)
    metrics.INFERENCE_LATENCY.observe(time.perf_counter() - started)
    metrics.observe_predictions(probabilities.argmax(axis=1), probabilities.max(axis=1))
    observe.note(environ, batch_size=len(pixels), model_version=model.version)
    return probabilities
