"""Model repositories: where the trainer publishes versions and the service reads them (docs/artifact.md).

A repository is a local directory or a prefix of an S3-compatible bucket (s3.py). Both hold the same
layout and both hand a version over only after format.load has verified it:

    <root>/<name>/<version>/manifest.json + weights.npz (+ report/)
    <root>/<name>/labels.json

A version is published atomically for readers: it becomes visible once its manifest exists, and the
manifest is written last. Two publishers at once get distinct version numbers, and two label changes
at once never lose one of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import format
from .format import ArtifactError

SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/")  # s3://, gs://, and typos such as s3:/bucket
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules


class RepositoryError(Exception):
    """The repository could not be read or written: unreachable, denied, missing (one-line message).
    Not an ArtifactError: nothing is known to be wrong with the model, and a retry may succeed."""

    def __init__(self, operation: str, message: str):
        super().__init__(message)
        self.operation = operation


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""  # without leading or trailing slashes

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_location(name: str, text: str) -> Path | S3Location:
    """MODEL_DIR / --model-dir: a local directory or s3://bucket/prefix. Any other URI (gs://, a typo
    such as s3:/bucket) is a ValueError naming `name`, never taken as a relative path."""
    scheme = SCHEME.match(text)
    if scheme is None:
        return Path(text)
    if not text.startswith("s3://"):
        raise ValueError(f"{name} {text!r}: unsupported scheme {scheme.group(1)!r}; a model repository is a local "
                         "directory or s3://bucket/prefix (Google Cloud Storage, MinIO, Ceph: s3:// with "
                         "AWS_ENDPOINT_URL_S3)")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not BUCKET.fullmatch(bucket):
        raise ValueError(f"{name} {text!r}: {bucket!r} is not a bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    return S3Location(bucket, prefix.strip("/"))


def open_repository(location: Path | S3Location, *, cache_dir: Path | None = None,
                    on_request: Callable[[str], None] | None = None) -> Repository:
    """The repository at `location`. For a bucket, versions are downloaded into `cache_dir` (kept
    for the next start), or into a temporary directory deleted after each read; `on_request(operation)`
    is called before each request to the store."""
    if isinstance(location, S3Location):
        from .s3 import S3Repository  # boto3 is imported only by who uses a bucket

        return S3Repository(location, cache_dir=cache_dir, on_request=on_request)
    return LocalRepository(Path(location))


@dataclass(frozen=True)
class Snapshot:
    """What one look at a repository sees: each complete version with a token that changes when its
    manifest is rewritten, and the token of labels.json (None when there is none)."""

    versions: dict[int, object]
    labels: object | None


class Repository:
    """What the trainer and the service do with a repository; LocalRepository and S3Repository say how."""

    def snapshot(self, name: str) -> Snapshot:
        raise NotImplementedError

    def load(self, name: str, version: int) -> tuple[dict, dict[str, np.ndarray]]:
        """(manifest, arrays) of one version, verified by format.load; ArtifactError when missing or invalid."""
        raise NotImplementedError

    def read_manifest(self, name: str, version: int) -> dict:
        """One version's manifest, its fields checked, without reading the weights."""
        raise NotImplementedError

    def read_labels(self, name: str) -> format.VersionLabels:
        raise NotImplementedError

    def update_labels(self, name: str, change: Callable[[format.VersionLabels], format.VersionLabels]
                      ) -> format.VersionLabels:
        """Replace labels.json by change(current labels), atomically with respect to other writers."""
        raise NotImplementedError

    def publish(self, name: str, arrays: dict[str, np.ndarray], manifest: dict,
                write_extras: Callable[[Path], None] | None = None) -> int:
        """Publish arrays + manifest (format.build_manifest) as the next free version; returns it.
        `write_extras(dir)` may add files (the report) before the version becomes visible."""
        raise NotImplementedError

    def write_document(self, name: str, relative: str, document: dict) -> str:
        """Write a JSON document (a sweep's leaderboard) at <name>/<relative>; returns where it went."""
        raise NotImplementedError

    def location(self, name: str, version: int | None = None) -> str:
        raise NotImplementedError

    def versions(self, name: str) -> list[int]:
        """Complete version numbers (valid or not), ascending."""
        return sorted(self.snapshot(name).versions)

    def resolve(self, name: str, version: int | None = None) -> int:
        """`version` if it exists, else the highest one when None; ArtifactError otherwise."""
        versions = self.versions(name)
        if not versions:
            raise ArtifactError(f"no published version of model {name!r} in {self}")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise ArtifactError(f"model {name!r} has no version {version} in {self} "
                                f"(available: {', '.join(map(str, versions))})")
        return version


def stage(directory: Path, arrays: dict[str, np.ndarray], manifest: dict,
          write_extras: Callable[[Path], None] | None) -> dict:
    """Write the weights (fsynced) and extras of a version into `directory`; returns the manifest
    with the weights' sha256. Both repositories publish what this staged."""
    weights = directory / format.WEIGHTS
    with open(weights, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    if write_extras is not None:
        write_extras(directory)
    return {**manifest, "weights": {**manifest["weights"], "sha256": format.sha256_file(weights)}}


def labels_document(labels: format.VersionLabels) -> bytes:
    """labels.json's bytes, checked: no repository ever holds labels the service would refuse."""
    document = labels.to_json()
    format.check_labels(document)
    return json_bytes(document)


def json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


# -- a local directory --------------------------------------------------------------------------

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

    def write_document(self, name: str, relative: str, document: dict) -> str:
        path = self.root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, json_bytes(document))
        return str(path)
