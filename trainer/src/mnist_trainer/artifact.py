"""The versioned weights artifact: MODEL_DIR/<name>/<version>/{manifest.json, weights.npz}.

The format is specified in docs/artifact.md; this module writes it and reads it back.
Publishing is atomic: everything is written into a hidden temporary directory inside
MODEL_DIR/<name>, fsynced, then renamed to the next free integer. rename(2) refuses to replace a
non-empty directory, so two trainers publishing at once each get their own version.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
TEMP_PREFIX = ".publishing-"


class ArtifactError(Exception):
    """A model directory, version or artifact is missing or invalid (one-line message)."""


def weight_names(n_layers: int) -> list[str]:
    return [name for l in range(1, n_layers + 1) for name in (f"W{l}", f"b{l}")]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_versions(model_dir: Path, name: str) -> list[int]:
    """Published versions, ascending. Non-numeric entries (temporary directories) are ignored."""
    root = Path(model_dir) / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(directory: Path, manifest: dict) -> None:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    _fsync(path)


def publish(model_dir: Path, name: str, arrays: dict[str, np.ndarray], manifest: dict,
            write_extras: Callable[[Path], None] | None = None) -> tuple[int, Path]:
    """Publish arrays + manifest as the next free version of `name`; returns (version, path).

    `manifest` gets `version` and the weights' sha256 filled in. `write_extras(dir)` may add
    files (the report) to the version before it becomes visible.
    """
    root = Path(model_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
    try:
        weights = staging / WEIGHTS
        with open(weights, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        manifest = {**manifest, "weights": {**manifest.get("weights", {}), "file": WEIGHTS,
                                            "sha256": sha256_file(weights)}}
        if write_extras is not None:
            write_extras(staging)
        while True:
            version = max(list_versions(model_dir, name), default=0) + 1
            manifest = {**manifest, "version": version}
            _write_manifest(staging, manifest)
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


def resolve_version(model_dir: Path, name: str, version: int | None = None) -> Path:
    """Directory of `version`, or of the highest published version when None."""
    versions = list_versions(model_dir, name)
    if not versions:
        raise ArtifactError(f"no published version of model {name!r} in {model_dir}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise ArtifactError(f"model {name!r} has no version {version} in {model_dir} "
                            f"(available: {', '.join(map(str, versions))})")
    return Path(model_dir) / name / str(version)


def load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify one version directory: (manifest, arrays)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path / MANIFEST}: cannot read manifest: {e}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
    if path.name.isdigit() and manifest.get("version") != int(path.name):
        raise ArtifactError(f"{path}: manifest says version {manifest.get('version')!r}")
    weights = path / manifest["weights"]["file"]
    if sha256_file(weights) != manifest["weights"]["sha256"]:
        raise ArtifactError(f"{weights}: sha256 does not match the manifest")
    sizes = manifest["architecture"]["layer_sizes"]
    with np.load(weights, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        expected[f"W{l}"], expected[f"b{l}"] = (n_in, n_out), (n_out,)
    if set(arrays) != set(expected):
        raise ArtifactError(f"{weights}: arrays {sorted(arrays)} do not match layer_sizes {sizes}")
    for k, shape in expected.items():
        a = arrays[k]
        if a.shape != shape or a.dtype != np.float32 or not np.isfinite(a).all():
            raise ArtifactError(f"{weights}: array {k} must be finite float32 of shape {shape}, "
                                f"got {a.dtype} {a.shape}")
    return manifest, arrays
