"""What every model repository does (Repository), what a look at one sees (Snapshot), how it fails
(RepositoryError), and the staging both kinds publish from. The kinds: local.py (a directory) and
s3.py (a bucket); factory.py opens the one a location names. docs/artifact.md has the layout."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import format
from ..format import ArtifactError


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
        return self.write_object(f"{name}/{relative}", json_bytes(document))

    def write_object(self, relative: str, data: bytes) -> str:
        """Write `data` at <root>/<relative> whole (readers never see part of it); returns where it went.
        RepositoryError (a bucket) or OSError (a directory) when it cannot."""
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
