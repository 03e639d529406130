"""docs/artifact.md is the only contract: the trainer writes it, the service reads it alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from idx_files import write_idx_dataset
from mnist_service import store
from mnist_trainer import MLP, artifact

SERVICE_SOURCES = Path(store.__file__).parent


def test_the_service_never_imports_the_trainer():
    for source in SERVICE_SOURCES.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "mnist_trainer" for n in names), source


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A version published by the real `mnist-train train` (tiny generated data)."""
    data, models = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("models")
    write_idx_dataset(data, n_train=120, n_test=30)
    result = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "train", "--data", data, "--model-dir",
                             models, "--preset", "fast", "--hidden", "12,8", "--epochs", "1", "--batch-size", "16",
                             "--val-size", "20"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return models / "mnist" / "1"


def test_the_service_reads_what_the_trainer_publishes(published):
    served = store.load_version(published)
    trained = MLP.from_artifact(published)
    pixels = np.random.default_rng(0).integers(0, 256, (50, 784))
    np.testing.assert_allclose(served.predict_proba(pixels.astype(np.float32)), trained.predict_proba(pixels),
                               atol=1e-6)
    assert served.version == 1 and served.sha256 == trained.manifest["weights"]["sha256"]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _rewrite_weights(path: Path, **changes) -> None:
    with np.load(path / "weights.npz") as npz:
        arrays = {**{k: npz[k] for k in npz.files}, **changes}
    np.savez(path / "weights.npz", **arrays)
    _rewrite_manifest(path, weights={"file": "weights.npz", "sha256": artifact.sha256_file(path / "weights.npz")})


CORRUPTIONS = {
    "format_version": lambda p: _rewrite_manifest(p, format_version=2),
    "version_mismatch": lambda p: _rewrite_manifest(p, version=7),
    "sha256": lambda p: _flip_a_byte(p / "weights.npz"),
    "shape": lambda p: _rewrite_weights(p, W2=np.zeros((12, 9), np.float32)),
    "dtype": lambda p: _rewrite_weights(p, b1=np.zeros(12, np.float64)),
    "non_finite": lambda p: _rewrite_weights(p, W1=np.full((784, 12), np.inf, np.float32)),
    "extra_array": lambda p: _rewrite_weights(p, W9=np.zeros(1, np.float32)),
    "no_manifest": lambda p: (p / "manifest.json").unlink(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_both_sides_reject_the_same_invalid_versions(published, tmp_path, corruption):
    copy = tmp_path / "1"
    copy.mkdir()
    for f in published.glob("*.*"):
        (copy / f.name).write_bytes(f.read_bytes())
    CORRUPTIONS[corruption](copy)
    with pytest.raises(artifact.ArtifactError):
        artifact.load(copy)
    with pytest.raises(store.InvalidVersion):
        store.load_version(copy)
