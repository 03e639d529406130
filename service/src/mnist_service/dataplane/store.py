"""The model store: finds, verifies and hot-swaps versions of MODEL_DIR/<name>/ (read-only), a
directory or a bucket (mnist_artifact.repository).

Unpinned requests go to the version labelled `stable` when there is one, else to the highest valid
version (or to the pinned one, MODEL_VERSION); a `canary` label takes its share of them. A version is
verified against docs/artifact.md by mnist_artifact, the one reader, before it is served; an invalid
one is skipped, logged and counted, and so is a label pointing at one, and what already serves keeps
serving. Requests take `store.routing` once, so each response is computed wholly by the version it
reports.

A repository that cannot be read (a bucket unreachable, denied, throttled) changes nothing: what
serves keeps serving, the failure is counted, one line is logged per streak of failed polls, and
the next poll tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from mnist_artifact import ArtifactError, Model, format
from mnist_artifact.repository import LocalRepository, Repository, RepositoryError, Snapshot, open_repository

from .. import metrics

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
    def __init__(self, repository: Repository, name: str, pinned: int | None = None, cache_size: int = 4):
        self.repository = repository
        self.name, self.pinned = name, pinned
        self.routing: Routing | None = None
        self.not_ready_reason = "no model loaded yet"
        self._snapshot = Snapshot({}, None)  # what the last poll saw
        self._rejected: dict[int, object] = {}  # version -> its manifest's token when it was rejected
        self._cache: OrderedDict[int, Model] = OrderedDict()  # versions asked for by ?version=N
        self._cache_size = cache_size
        self._labels = format.VersionLabels()  # the last valid labels.json
        self._labels_token: object = None
        self._rejected_labels: set[tuple[str, int]] = set()
        self._failed_polls = 0  # the current streak of polls the repository failed
        self._lock = threading.Lock()

    @property
    def current(self) -> Model | None:
        """The version unpinned requests go to (the canary aside)."""
        routing = self.routing
        return routing.default if routing else None

    def versions(self) -> list[int]:
        """Published version numbers (valid or not), ascending: a directory is listed now, a bucket
        as the last poll saw it (a listing is a request to the store)."""
        if isinstance(self.repository, LocalRepository):
            return self.repository.versions(self.name)
        return sorted(self._snapshot.versions)

    def refresh(self) -> None:
        """Re-read the labels and versions; swap in a new routing if anything changed."""
        with self._lock:
            try:
                self._snapshot = self.repository.snapshot(self.name)
                published = sorted(self._snapshot.versions)
                labels = self._resolve_labels(self._read_labels(), published)
                default, default_label = self._default(published, labels)
            except RepositoryError as e:
                self._poll_failed(e)
                return
            self._poll_succeeded()
            if default is None:
                if self.routing is None:
                    self.not_ready_reason = self._no_model_reason(published)
                return
            canary = labels.get(format.CANARY) if self.pinned is None else None
            routing = Routing(default, default_label, canary, self._labels.canary_percent if canary else 0.0, labels)
            if routing != self.routing:
                self._swap(routing)

    def _poll_failed(self, error: RepositoryError) -> None:
        metrics.REPOSITORY_ERRORS.labels(error.operation).inc()
        self._failed_polls += 1
        if self.routing is None:
            self.not_ready_reason = str(error)
        if self._failed_polls == 1:  # one line per streak, not one per poll
            serving = self.routing.default.version if self.routing else None
            log.error("model repository unavailable; retrying every poll", extra={
                "model": self.name, "operation": error.operation, "reason": str(error), "serving_version": serving})

    def _poll_succeeded(self) -> None:
        if self._failed_polls:
            log.info("model repository available again", extra={"model": self.name, "failed_polls": self._failed_polls})
            self._failed_polls = 0

    def _read_labels(self) -> format.VersionLabels:
        """labels.json, re-read when it changes; an invalid one is logged and the last valid one kept."""
        if self._snapshot.labels != self._labels_token:
            try:
                self._labels = self.repository.read_labels(self.name)
            except ArtifactError as e:
                metrics.LABELS_REJECTED.labels("*").inc()
                log.warning("rejected labels file", extra={"model": self.name, "reason": str(e)})
            self._labels_token = self._snapshot.labels
        return self._labels

    def _resolve_labels(self, labels: format.VersionLabels, published: list[int]) -> dict[str, Model]:
        resolved, rejected = {}, set()
        for label, version in labels.versions.items():
            model = self._loaded(version) if version in published else None
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

    def _default(self, published: list[int], labels: dict[str, Model]) -> tuple[Model | None, str | None]:
        if self.pinned is not None:
            return (self._loaded(self.pinned) if self.pinned in published else None), None
        if format.STABLE in labels:
            return labels[format.STABLE], format.STABLE
        for version in reversed(published):  # the highest valid version
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
        """Load and verify `version`; None when it is invalid. RepositoryError when it cannot be read."""
        manifest = self._snapshot.versions.get(version)
        if version in self._rejected and self._rejected[version] == manifest:
            return None  # already rejected, unchanged since: do not log it again every poll
        try:
            model = Model(*self.repository.load(self.name, version))
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

    def _no_model_reason(self, published: list[int]) -> str:
        where = self.repository
        if self.pinned:
            return f"pinned version {self.pinned} of model {self.name!r} is missing or invalid in {where}"
        if not published:
            return f"no version of model {self.name!r} in {where} yet"
        return f"no valid version of model {self.name!r} in {where} (rejected: {published[::-1]})"

    def get(self, version: int) -> Model | None:
        """A specific published version (cached), or None when it is absent, invalid or cannot be read now."""
        routing = self.routing
        if routing is not None and routing.default.version == version:
            return routing.default
        with self._lock:
            if version not in self._cache and version not in self.versions():
                return None
            try:
                return self._loaded(version)
            except RepositoryError as e:
                metrics.REPOSITORY_ERRORS.labels(e.operation).inc()
                log.warning("model version could not be read", extra={"model": self.name, "version": version,
                                                                       "reason": str(e)})
                return None

    def label(self, label: str) -> Model | None:
        """The version `label` points at, if it is valid."""
        routing = self.routing
        return routing.labels.get(label) if routing else None

    def start_polling(self, interval: float, first_wait: float) -> threading.Thread:
        """Refresh now, then every `interval` seconds, in a thread. Waits at most `first_wait` seconds
        for the first refresh: a slow store must not hold a worker's boot past gunicorn's timeout
        (a killed, rebooted worker would be a crash loop); the worker starts not ready instead."""
        first = threading.Event()

        def poll():
            while True:
                try:
                    self.refresh()
                except Exception:  # a poll must never kill the thread that keeps models fresh
                    log.exception("model refresh failed")
                first.set()
                time.sleep(interval)

        thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        thread.start()
        first.wait(first_wait)
        return thread


def open_store(settings) -> ModelStore:
    """The model store of `settings` (MODEL_DIR, MODEL_NAME, ...), refreshed and polling: one per
    gunicorn worker and per gRPC process."""
    repository = open_repository(settings.model_dir, cache_dir=settings.model_cache_dir,
                                 on_request=lambda operation: metrics.REPOSITORY_REQUESTS.labels(operation).inc())
    store = ModelStore(repository, settings.model_name, settings.model_version)
    if settings.model_poll_seconds > 0:
        # A slow store gets half of gunicorn's TIMEOUT, within which a booting worker must be up.
        store.start_polling(settings.model_poll_seconds, first_wait=settings.timeout / 2)
    else:
        store.refresh()
    return store
