"""The model store: finds, verifies and hot-swaps versions under MODEL_DIR/<name>/ (read-only).

Serves the highest valid version (or the pinned one). A version is verified against
docs/artifact.md by mnist_artifact, the one reader, before it is served; an invalid one is skipped,
logged and counted, and the version already serving keeps serving. Requests take `store.current`
once, so each response is computed wholly by the version it reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from mnist_artifact import ArtifactError, Model, format

from . import metrics

log = logging.getLogger(__name__)


class ModelStore:
    def __init__(self, model_dir: Path, name: str, pinned: int | None = None, cache_size: int = 4):
        self.root = Path(model_dir) / name
        self.name, self.pinned = name, pinned
        self.current: Model | None = None
        self.not_ready_reason = "no model loaded yet"
        self._rejected: dict[int, float] = {}  # version -> manifest mtime when it was rejected
        self._cache: OrderedDict[int, Model] = OrderedDict()  # versions asked for by ?version=N
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def versions(self) -> list[int]:
        """Version numbers on disk (valid or not), ascending."""
        return format.list_versions(self.root.parent, self.name)

    def refresh(self) -> None:
        """Serve the best valid version on disk, if it differs from the one serving."""
        with self._lock:
            on_disk = self.versions()
            candidates = [v for v in on_disk if v == self.pinned] if self.pinned else on_disk[::-1]
            for version in candidates:
                if self.current is not None and version == self.current.version:
                    return  # nothing better than what is serving
                model = self._try_load(version)
                if model is not None:
                    self._swap(model)
                    return
            if self.current is None:
                self.not_ready_reason = self._no_model_reason(candidates)

    def _try_load(self, version: int) -> Model | None:
        path = self.root / str(version)
        try:
            stamp = (path / "manifest.json").stat().st_mtime
        except OSError:
            stamp = None
        if version in self._rejected and self._rejected[version] == stamp:
            return None  # already rejected, unchanged since: do not log it again every poll
        try:
            model = Model.load(path)
        except ArtifactError as e:
            self._rejected[version] = stamp
            metrics.MODEL_LOAD_FAILURES.inc()
            log.warning("rejected model version", extra={"model": self.name, "version": version, "reason": str(e)})
            return None
        metrics.MODEL_LOADS.inc()
        return model

    def _swap(self, model: Model) -> None:
        old, self.current = self.current, model
        self.not_ready_reason = ""
        if old is not None:
            metrics.MODEL_INFO.labels(old.name, str(old.version), old.sha256).set(0)
        metrics.MODEL_INFO.labels(model.name, str(model.version), model.sha256).set(1)
        log.info("serving model version", extra={"model": model.name, "version": model.version,
                                                 "previous_version": old.version if old else None})

    def _no_model_reason(self, candidates: list[int]) -> str:
        if self.pinned:
            return f"pinned version {self.pinned} of model {self.name!r} is missing or invalid in {self.root.parent}"
        if not candidates:
            return f"no version of model {self.name!r} in {self.root.parent} yet"
        return f"no valid version of model {self.name!r} in {self.root.parent} (rejected: {candidates})"

    def get(self, version: int) -> Model | None:
        """A specific version on disk (cached), or None when it is absent or invalid."""
        current = self.current
        if current is not None and current.version == version:
            return current
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
            if version not in self.versions():
                return None
            model = self._try_load(version)
            if model is not None:
                self._cache[version] = model
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return model

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
