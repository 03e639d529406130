"""A model repository in a local directory (a mounted volume shares it); see docs/artifact.md."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import format
from .base import Repository, Snapshot, json_bytes, labels_document, stage


def stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of `path`, None when it cannot be stat'ed. An atomic rewrite (a new file
    renamed over the old) is a new inode: two rewrites within one mtime tick are still told apart."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write beside `path`, fsync, then rename over it: readers see the old file or the new one."""
    fd, staging = tempfile.mkstemp(prefix=format.TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


class LocalRepository(Repository):
    """A directory (a mounted volume shares it). Versions are staged in a hidden directory beside
    them and renamed into place: rename(2) refuses to replace a non-empty directory, so two
    publishers each get their own number; labels.json is changed under an advisory lock."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def location(self, name: str, version: int | None = None) -> str:
        return str(self.root / name if version is None else self.root / name / str(version))

    def directory(self, name: str, version: int | None = None) -> Path:
        """The directory of `version`, or of the highest version when None; ArtifactError when absent."""
        return self.root / name / str(self.resolve(name, version))

    def snapshot(self, name: str) -> Snapshot:
        directory = self.root / name
        return Snapshot({v: stamp(directory / str(v) / format.MANIFEST) for v in format.list_versions(self.root, name)},
                        stamp(directory / format.LABELS_FILE))

    def load(self, name: str, version: int) -> tuple[dict, dict[str, np.ndarray]]:
        return format.load(self.root / name / str(version))

    def read_manifest(self, name: str, version: int) -> dict:
        return format.read_manifest(self.root / name / str(version))

    def read_labels(self, name: str) -> format.VersionLabels:
        return format.read_labels(self.root, name)

    def update_labels(self, name, change):
        with self._labels_lock(name):
            labels = change(self.read_labels(name))
            write_file_atomically(self.root / name / format.LABELS_FILE, labels_document(labels))
            return labels

    @contextlib.contextmanager
    def _labels_lock(self, name: str) -> Iterator[None]:
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".labels.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def publish(self, name, arrays, manifest, write_extras=None) -> int:
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=format.TEMP_PREFIX, dir=root))
        try:
            manifest = stage(staging, arrays, manifest, write_extras)
            while True:
                version = max(format.list_versions(self.root, name), default=0) + 1
                (staging / format.MANIFEST).write_bytes(json_bytes({**manifest, "version": version}))
                _fsync(staging / format.MANIFEST)
                _fsync(staging)
                try:
                    os.rename(staging, root / str(version))
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue  # another publisher took this number first: take the next one
                    raise
                _fsync(root)
                return version
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write_object(self, relative: str, data: bytes) -> str:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, data)
        return str(path)
