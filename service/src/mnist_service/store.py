"""The model store: finds, verifies and hot-swaps versions under MODEL_DIR/<name>/ (read-only).

Unpinned requests go to the version labelled `stable` when there is one, else to the highest valid
version (or to the pinned one, MODEL_VERSION); a `canary` label takes its share of them. A version is
verified against docs/artifact.md by mnist_artifact, the one reader, before it is served; an invalid
one is skipped, logged and counted, and so is a label pointing at one, and what already serves keeps
serving. Requests take `store.routing` once, so each response is computed wholly by the version it
reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from mnist_artifact import ArtifactError, Model, format

from . import metrics
from .files import stamp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routing:
    """Where requests go; replaced whole on every change."""

    default: Model  # unpinned requests (unless the canary draws them)
    default_label: str | None = None  # "stable" when `default` is the stable version
    canary: Model | None = None
    canary_percent: float = 0.0
    labels: dict[str, Model] = field(default_factory=dict)  # every label that points at a valid version

    def describe(self) -> dict:
        return {"default": self.default.version, "canary": self.canary.version if self.canary else None,
                "canary_percent": self.canary_percent, "labels": {k: m.version for k, m in self.labels.items()}}


class ModelStore:
    def __init__(self, model_dir: Path, name: str, pinned: int | None = None, cache_size: int = 4):
        self.root = Path(model_dir) / name
        self.name, self.pinned = name, pinned
        self.routing: Routing | None = None
        self.not_ready_reason = "no model loaded yet"
        self._rejected: dict[int, tuple | None] = {}  # version -> its manifest's stamp when it was rejected
        self._cache: OrderedDict[int, Model] = OrderedDict()  # versions asked for by ?version=N
        self._cache_size = cache_size
        self._labels = format.VersionLabels()  # the last valid labels.json
        self._labels_stamp: tuple[int, int, int] | None = None
        self._rejected_labels: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    @property
    def current(self) -> Model | None:
        """The version unpinned requests go to (the canary aside)."""
        routing = self.routing
        return routing.default if routing else None

    def versions(self) -> list[int]:
        """Version numbers on disk (valid or not), ascending."""
        return format.list_versions(self.root.parent, self.name)

    def refresh(self) -> None:
        """Re-read the labels and versions on disk; swap in a new routing if anything changed."""
        with self._lock:
            on_disk = self.versions()
            labels = self._resolve_labels(self._read_labels(), on_disk)
            default, default_label = self._default(on_disk, labels)
            if default is None:
                if self.routing is None:
                    self.not_ready_reason = self._no_model_reason(on_disk)
                return
            canary = labels.get(format.CANARY) if self.pinned is None else None
            routing = Routing(default, default_label, canary, self._labels.canary_percent if canary else 0.0, labels)
            if routing != self.routing:
                self._swap(routing)

    def _read_labels(self) -> format.VersionLabels:
        """labels.json, re-read when it changes; an invalid one is logged and the last valid one kept."""
        current = stamp(self.root / format.LABELS_FILE)
        if current != self._labels_stamp:
            self._labels_stamp = current
            try:
                self._labels = format.read_labels(self.root.parent, self.name)
            except ArtifactError as e:
                metrics.LABELS_REJECTED.labels("*").inc()
                log.warning("rejected labels file", extra={"model": self.name, "reason": str(e)})
        return self._labels

    def _resolve_labels(self, labels: format.VersionLabels, on_disk: list[int]) -> dict[str, Model]:
        resolved, rejected = {}, set()
        for label, version in labels.versions.items():
            model = self._loaded(version) if version in on_disk else None
            if model is not None:
                resolved[label] = model
            else:
                rejected.add((label, version))
        for label, version in rejected - self._rejected_labels:  # log and count each bad pointer once
            metrics.LABELS_REJECTED.labels(label).inc()
            log.warning("ignored label: its version is missing or invalid",
                        extra={"model": self.name, "label": label, "version": version})
        self._rejected_labels = rejected
        return resolved

    def _default(self, on_disk: list[int], labels: dict[str, Model]) -> tuple[Model | None, str | None]:
        if self.pinned is not None:
            return (self._loaded(self.pinned) if self.pinned in on_disk else None), None
        if format.STABLE in labels:
            return labels[format.STABLE], format.STABLE
        for version in reversed(on_disk):  # the highest valid version
            model = self._loaded(version)
            if model is not None:
                return model, None
        return None, None

    def _loaded(self, version: int) -> Model | None:
        """`version` from what is serving or cached, else loaded and verified (None when invalid)."""
        routing = self.routing
        if routing is not None:
            for model in (routing.default, routing.canary, *routing.labels.values()):
                if model is not None and model.version == version:
                    return model
        if version in self._cache:
            self._cache.move_to_end(version)  # least recently used goes first
            return self._cache[version]
        model = self._try_load(version)
        if model is not None:
            self._cache[version] = model
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return model

    def _try_load(self, version: int) -> Model | None:
        path = self.root / str(version)
        manifest = stamp(path / format.MANIFEST)
        if version in self._rejected and self._rejected[version] == manifest:
            return None  # already rejected, unchanged since: do not log it again every poll
        try:
            model = Model.load(path)
        except ArtifactError as e:
            self._rejected[version] = manifest
            metrics.MODEL_LOAD_FAILURES.inc()
            log.warning("rejected model version", extra={"model": self.name, "version": version, "reason": str(e)})
            return None
        metrics.MODEL_LOADS.inc()
        return model

    def _swap(self, routing: Routing) -> None:
        old, self.routing = self.routing, routing
        self.not_ready_reason = ""
        metrics.show_routing(routing, old)
        log.info("serving model version", extra={
            "model": self.name, "version": routing.default.version,
            "previous_version": old.default.version if old else None, **routing.describe()})

    def _no_model_reason(self, on_disk: list[int]) -> str:
        if self.pinned:
            return f"pinned version {self.pinned} of model {self.name!r} is missing or invalid in {self.root.parent}"
        if not on_disk:
            return f"no version of model {self.name!r} in {self.root.parent} yet"
        return f"no valid version of model {self.name!r} in {self.root.parent} (rejected: {on_disk[::-1]})"

    def get(self, version: int) -> Model | None:
        """A specific version on disk (cached), or None when it is absent or invalid."""
        routing = self.routing
        if routing is not None and routing.default.version == version:
            return routing.default
        with self._lock:
            if version not in self._cache and version not in self.versions():
                return None
            return self._loaded(version)

    def label(self, label: str) -> Model | None:
        """The version `label` points at, if it is valid."""
        routing = self.routing
        return routing.labels.get(label) if routing else None

    def start_polling(self, interval: float) -> threading.Thread:
        def poll():
            while True:
                time.sleep(interval)
                try:
                    self.refresh()
                except Exception:  # a poll must never kill the thread that keeps models fresh
                    log.exception("model refresh failed")

        thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        thread.start()
        return thread
