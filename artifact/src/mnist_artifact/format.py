"""The artifact's format (docs/artifact.md): layout, manifest, and the one reader that verifies both.

    MODEL_DIR/<name>/<version>/manifest.json + weights.npz
    MODEL_DIR/<name>/labels.json                        (optional: version labels, a canary)

`build_manifest` writes the manifest's body, `load` reads a version back and refuses anything the
format does not allow; `list_versions` finds versions on disk; `read_labels`
reads the labels. Where versions live (a directory, a bucket) and how they are written atomically
is the repository package's (repository/).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
TEMP_PREFIX = ".publishing-"  # staging directories of a publish in progress: never a version
SIDE = 28
PIXELS = SIDE * SIDE
LABELS = [str(d) for d in range(10)]
SHA256 = re.compile(r"[0-9a-f]{64}")
LABELS_FILE = "labels.json"
LABEL_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")  # stable, canary, ...: safe in URLs and metrics
STABLE, CANARY = "stable", "canary"


class ArtifactError(Exception):
    """A model directory, version or artifact is missing or invalid (one-line message)."""


def weight_names(n_layers: int) -> list[str]:
    """W1, b1, ..., WL, bL: the arrays of an MLP with n_layers affine layers."""
    return [name for l in range(1, n_layers + 1) for name in (f"W{l}", f"b{l}")]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- versions on disk --------------------------------------------------------------------------

def list_versions(model_dir: Path, name: str) -> list[int]:
    """Version numbers on disk (valid or not), ascending. Other names (staging directories) are not versions."""
    try:
        return sorted(int(p.name) for p in (Path(model_dir) / name).iterdir() if is_version(p.name) and p.is_dir())
    except OSError:
        return []


def is_version(name: str) -> bool:
    """A version's name: a positive integer without leading zeros."""
    return name.isascii() and name.isdigit() and name[0] != "0"


# -- version labels ----------------------------------------------------------------------------

@dataclass(frozen=True)
class VersionLabels:
    """labels.json: label -> version, and the share of unlabelled traffic the canary takes."""

    versions: dict[str, int] = field(default_factory=dict)
    canary_percent: float = 0.0

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "labels": dict(sorted(self.versions.items())),
                "canary_percent": self.canary_percent}


def read_labels(model_dir: Path, name: str) -> VersionLabels:
    """The labels of model `name` (none when the file does not exist); ArtifactError when invalid."""
    path = Path(model_dir) / name / LABELS_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return VersionLabels()
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read labels: {e}") from None
    return check_labels(document, path)


def check_labels(document, path: Path | str = LABELS_FILE) -> VersionLabels:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ArtifactError(f"{path}: {what}")

    need(isinstance(document, dict) and document.get("format_version") == FORMAT_VERSION,
         f"must be a JSON object with format_version {FORMAT_VERSION}")
    versions, percent = document.get("labels"), document.get("canary_percent", 0)
    need(isinstance(versions, dict), '"labels" must be an object of label -> version')
    for label, version in versions.items():
        need(LABEL_NAME.fullmatch(label) is not None, f"label {label!r} must match {LABEL_NAME.pattern}")
        need(type(version) is int and version >= 1, f"label {label!r}: version must be a positive integer")
    need(type(percent) in (int, float) and 0 <= percent < 100, "canary_percent must be a number in [0, 100)")
    need((CANARY in versions) == (percent > 0), f"canary_percent must be > 0 exactly when there is a {CANARY!r} label")
    return VersionLabels(dict(versions), float(percent))


# -- manifest ----------------------------------------------------------------------------------

def build_manifest(name: str, arrays: dict[str, np.ndarray], *, scale: float, mean: float, std: float,
                   **sections) -> dict:
    """The manifest of an MLP with these arrays and input normalisation; `sections` (training,
    dataset, metrics, profile, code_version, library_versions) are recorded as given. The publisher adds
    `version` and `weights.sha256` when it writes the version."""
    sizes = layer_sizes(arrays)
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": {"type": "mlp", "layer_sizes": sizes, "activation": "relu", "output": "softmax"},
        "input": {"shape": [SIDE, SIDE], "layout": "row-major", "pixel_range": [0, 255],
                  "scale": scale, "mean": mean, "std": std, "formula": "x = (pixel * scale - mean) / std"},
        "labels": list(LABELS),
        "weights": {"file": WEIGHTS, "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                                for k, a in arrays.items()}},
        **sections,
    }


def layer_sizes(arrays: dict[str, np.ndarray]) -> list[int]:
    """[n0, n1, ..., nL] from W1..WL."""
    n_layers = sum(1 for k in arrays if k.startswith("W"))
    weights = [arrays[f"W{l}"] for l in range(1, n_layers + 1)]
    return [weights[0].shape[0]] + [w.shape[1] for w in weights]


def _check_manifest(manifest, directory: str) -> None:
    """The fields a reader relies on, with their types: a wrong one is an ArtifactError, never a KeyError.
    `directory` is the version's place (a path or a URI), named in messages."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ArtifactError(f"{directory}/{MANIFEST}: {what}")

    need(isinstance(manifest, dict), "is not a JSON object")
    need(manifest.get("format_version") == FORMAT_VERSION,
         f"unsupported format_version {manifest.get('format_version')!r} (this reader knows {FORMAT_VERSION})")
    folder = directory.rstrip("/").rsplit("/", 1)[-1]
    if is_version(folder):
        need(manifest.get("version") == int(folder),
             f"manifest says version {manifest.get('version')!r}, the directory {folder}")
    need(isinstance(manifest.get("name"), str), '"name" must be a string')
    sizes = _get(manifest, "architecture", "layer_sizes")
    need(isinstance(sizes, list) and len(sizes) >= 2 and all(type(n) is int and n >= 1 for n in sizes),
         f"architecture.layer_sizes must be a list of at least two positive integers, got {sizes!r}")
    need(sizes[0] == PIXELS and sizes[-1] == len(LABELS),
         f"architecture.layer_sizes {sizes} do not map {PIXELS} pixels to {len(LABELS)} classes")
    for key in ("scale", "mean", "std"):
        value = _get(manifest, "input", key)
        need(type(value) in (int, float) and np.isfinite(value) and (key != "std" or value > 0),
             f"input.{key} must be a finite number{' > 0' if key == 'std' else ''}, got {value!r}")
    need(manifest.get("labels") == LABELS, f'"labels" must be {LABELS}')
    file = _get(manifest, "weights", "file")
    need(file == WEIGHTS, f"weights.file must be {WEIGHTS!r}, got {file!r}")
    sha = _get(manifest, "weights", "sha256")
    need(isinstance(sha, str) and SHA256.fullmatch(sha) is not None,
         f"weights.sha256 must be 64 lowercase hex digits, got {sha!r}")


def _get(manifest: dict, section: str, key: str):
    value = manifest.get(section)
    return value.get(key) if isinstance(value, dict) else None


# -- reading a version -------------------------------------------------------------------------

def read_manifest(directory: Path) -> dict:
    """One version's manifest, its fields checked (checks 1 and 2 below), without reading the weights."""
    directory = Path(directory)
    try:
        data = (directory / MANIFEST).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{directory / MANIFEST}: cannot read manifest: {e}") from None
    return parse_manifest(data, str(directory))


def parse_manifest(data: bytes, directory: str) -> dict:
    """A manifest's bytes, parsed and checked; `directory` (a path or a URI) is named in messages."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise ArtifactError(f"{directory}/{MANIFEST}: cannot read manifest: {e}") from None
    _check_manifest(manifest, directory)
    return manifest


def load(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify one version directory (the checks of docs/artifact.md): (manifest, arrays)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS
    try:
        if sha256_file(weights) != manifest["weights"]["sha256"]:
            raise ArtifactError(f"{weights}: sha256 does not match the manifest")
        with np.load(weights, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:  # missing, unreadable, or not an npz of plain arrays
        raise ArtifactError(f"{weights}: cannot read weights: {e}") from None
    _check_arrays(arrays, manifest["architecture"]["layer_sizes"], weights)
    return manifest, arrays


def _check_arrays(arrays: dict[str, np.ndarray], sizes: list[int], weights: Path) -> None:
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        expected[f"W{l}"], expected[f"b{l}"] = (n_in, n_out), (n_out,)
    if set(arrays) != set(expected):
        raise ArtifactError(f"{weights}: arrays {sorted(arrays)} do not match layer_sizes {sizes}")
    for k, shape in expected.items():
        a = arrays[k]
        if a.shape != shape or a.dtype != np.float32:
            raise ArtifactError(f"{weights}: array {k} is {a.dtype}{list(a.shape)}, expected float32{list(shape)}")
        if not np.isfinite(a).all():
            raise ArtifactError(f"{weights}: array {k} has non-finite values")
