"""The step every inference route and RPC shares: pick the model a request names, run it, record it."""

from __future__ import annotations

import random
import re
import reprlib
import time
import zlib
from typing import NamedTuple

import numpy as np

from mnist_artifact import Model
from mnist_artifact.format import CANARY, LABEL_NAME

from .. import access, metrics
from ..errors import ApiError
from .drift import DriftMonitor
from .store import ModelStore, Routing

VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() passes "²", which int() refuses


class Picked(NamedTuple):
    model: Model
    label: str | None  # the label it was picked by (asked for, "stable", "canary"), if any

    def headers(self) -> list[tuple[str, str]]:
        """Which version answered, and by which label: on every inference response."""
        headers = [("X-Model-Version", str(self.model.version))]
        return headers + [("X-Model-Label", self.label)] if self.label else headers


def check_name(store: ModelStore, name: str) -> None:
    if name != store.name:
        raise ApiError(404, "model_not_found", f"unknown model {reprlib.repr(name)}; this server serves {store.name!r}")


def pick_model(store: ModelStore, name: str | None = None, version: str | None = None, label: str | None = None,
               client_id: str | None = None) -> Picked:
    """The version or label asked for, else the one serving now (or the canary, for its share).
    404 for another model's name, or a version or label that is not on disk or invalid; 503 when
    none is asked for and none serves yet."""
    if name is not None:
        check_name(store, name)
    if version is not None:
        return Picked(_version(store, version), None)
    if label is not None:
        return Picked(_labelled(store, label), label)
    routing = store.routing
    if routing is None:
        raise ApiError(503, "model_unavailable", store.not_ready_reason)
    if routing.canary is not None and _draws_canary(routing, client_id):
        return Picked(routing.canary, CANARY)
    return Picked(routing.default, routing.default_label)


def _version(store: ModelStore, version: str) -> Model:
    number = VERSION.fullmatch(version)
    model = store.get(int(version)) if number else None
    if model is None:
        shown = version if number else reprlib.repr(version)
        raise ApiError(404, "version_not_found", f"model {store.name!r} has no valid version {shown}",
                       {"versions": store.versions()})
    return model


def _labelled(store: ModelStore, label: str) -> Model:
    model = store.label(label) if LABEL_NAME.fullmatch(label) else None
    if model is None:
        routing = store.routing
        raise ApiError(404, "label_not_found", f"model {store.name!r} has no valid label {reprlib.repr(label)}",
                       {"labels": sorted(routing.labels) if routing else []})
    return model


def _draws_canary(routing: Routing, client_id: str | None) -> bool:
    """A client that names itself always lands on the same side; others are drawn at random."""
    if client_id:
        return zlib.crc32(client_id.encode()) % 10_000 < routing.canary_percent * 100
    return random.random() * 100 < routing.canary_percent


def run_model(picked: Picked, pixels: np.ndarray, notes: dict, drift: DriftMonitor) -> np.ndarray:
    """The forward pass, timed and counted in the metrics, the drift windows and the access line
    (`notes`: access.note's, where the payload log finds what the model was given and answered)."""
    started = time.perf_counter()
    probabilities = picked.model.predict_proba(pixels)
    metrics.observe_inference(picked.model.version, time.perf_counter() - started,
                              probabilities.argmax(axis=1), probabilities.max(axis=1))
    drift.observe(picked.model, pixels, probabilities)
    access.note(notes, batch_size=len(pixels), pixels=pixels, probabilities=probabilities)
    return probabilities
