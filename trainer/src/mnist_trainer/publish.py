"""Publishing a version atomically: the trainer's side of the artifact (docs/artifact.md).

Everything is written into a hidden staging directory inside MODEL_DIR/<name>, fsynced, then
renamed to the next free integer. rename(2) refuses to replace a non-empty directory, so two
trainers publishing at once each get their own version. The format itself (manifest, checks,
listing versions) is mnist_artifact.format's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mnist_artifact import format


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")
    _fsync(path)


def write_file_atomically(path: Path, document: dict) -> None:
    """Write JSON beside `path`, fsync, then rename over it: readers see the old file or the new one."""
    fd, staging = tempfile.mkstemp(prefix=format.TEMP_PREFIX, dir=path.parent)
    os.close(fd)
    try:
        _write_json(Path(staging), document)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


@contextlib.contextmanager
def labels_lock(model_dir: Path, name: str) -> Iterator[None]:
    """Serialise read-modify-write of labels.json between promoters (an advisory lock file)."""
    root = Path(model_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".labels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def publish(model_dir: Path, name: str, arrays: dict[str, np.ndarray], manifest: dict,
            write_extras: Callable[[Path], None] | None = None) -> tuple[int, Path]:
    """Publish arrays + manifest (format.build_manifest) as the next free version of `name`;
    returns (version, path). `write_extras(dir)` may add files (the report) before it becomes visible."""
    root = Path(model_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=format.TEMP_PREFIX, dir=root))
    try:
        weights = staging / format.WEIGHTS
        with open(weights, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        manifest = {**manifest, "weights": {**manifest["weights"], "sha256": format.sha256_file(weights)}}
        if write_extras is not None:
            write_extras(staging)
        while True:
            version = max(format.list_versions(model_dir, name), default=0) + 1
            manifest = {**manifest, "version": version}
            _write_json(staging / format.MANIFEST, manifest)
            _fsync(staging)
            try:
                os.rename(staging, root / str(version))
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another trainer took this number first: take the next one
                raise
            _fsync(root)
            return version, root / str(version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def latest_valid(model_dir: Path, name: str) -> dict | None:
    """The manifest of the highest version that loads and verifies, if any."""
    for version in reversed(format.list_versions(model_dir, name)):
        try:
            return format.load(Path(model_dir) / name / str(version))[0]
        except format.ArtifactError:
            continue
    return None
