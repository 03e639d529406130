"""The model store: finds, verifies and hot-swaps versions under MODEL_DIR/<name>/ (read-only).

Serves the highest valid version (or the pinned one). A version is verified against
docs/artifact.md before it is served; an invalid one is skipped, logged and counted, and the
version already serving keeps serving. Requests take `store.current` once, so each response is
computed wholly by the version it reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import metrics
from .inference import Model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class InvalidVersion(Exception):
    """A version directory that must not be served (the message says why)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_version(path: Path) -> Model:
    """Read and verify one version directory; raises InvalidVersion."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InvalidVersion(f"unknown format_version {manifest.get('format_version')!r}")
        if manifest.get("version") != int(path.name):
            raise InvalidVersion(f"manifest says version {manifest.get('version')!r}")
        weights = path / manifest["weights"]["file"]
        sha256 = _sha256(weights)
        if sha256 != manifest["weights"]["sha256"]:
            raise InvalidVersion("sha256 of the weights does not match the manifest")
        sizes = manifest["architecture"]["layer_sizes"]
        with np.load(weights, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except InvalidVersion:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidVersion(f"unreadable: {type(e).__name__}: {e}") from None
    _check_arrays(arrays, sizes)
    return Model(manifest, arrays, sha256)


def _check_arrays(arrays: dict[str, np.ndarray], sizes: list[int]) -> None:
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        expected[f"W{l}"], expected[f"b{l}"] = (n_in, n_out), (n_out,)
    if set(arrays) != set(expected):
        raise InvalidVersion(f"arrays {sorted(arrays)} do not match layer_sizes {sizes}")
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != np.float32:
            raise InvalidVersion(f"array {name} is {a.dtype}{list(a.shape)}, expected float32{list(shape)}")
        if not np.isfinite(a).all():
            raise InvalidVersion(f"array {name} has non-finite values")
    if sizes[0] != 784 or sizes[-1] != 10:
        raise InvalidVersion(f"layer_sizes {sizes} do not map 784 pixels to 10 classes")


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
        self._stop = threading.Event()

    def versions(self) -> list[int]:
        """Version numbers on disk (valid or not), ascending. Non-numeric names are ignored."""
        try:
            return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir())
        except OSError:
            return []

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
            model = load_version(path)
        except InvalidVersion as e:
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
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # a poll must never kill the thread that keeps models fresh
                    log.exception("model refresh failed")

        thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        thread.start()
        return thread

    def stop_polling(self) -> None:
        self._stop.set()
