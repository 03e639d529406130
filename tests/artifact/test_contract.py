"""docs/artifact.md is the only contract: the trainer publishes it, mnist_artifact reads it for everyone,
and the service never imports the trainer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mnist_service
from idx_files import write_idx_dataset
from mnist_artifact import Model, format
from mnist_trainer import MLP

SERVICE_SOURCES = Path(mnist_service.__file__).parent


def test_the_service_never_imports_the_trainer():
    sources = sorted(SERVICE_SOURCES.rglob("*.py"))
    assert {p.parent.name for p in sources} >= {"mnist_service", "dataplane", "codecs", "http", "grpc", "process"}
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "mnist_trainer" for n in names), source


def test_the_artifact_library_needs_only_numpy_and_pillow():
    """And boto3 for buckets, in s3.py alone: the optional [s3] extra."""
    allowed = {"numpy", "PIL", "mnist_artifact", "__future__"} | set(sys.stdlib_module_names)
    for source in Path(format.__file__).parent.rglob("*.py"):
        extra = {"boto3", "botocore"} if source.name == "s3.py" else set()
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert all(n.split(".")[0] in allowed | extra for n in names), (source, names)


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


def test_the_library_forward_pass_equals_the_trainers(published):
    """Parity: the published forward pass (mnist_artifact, what the service runs) against the
    trainer's own network, on the same version."""
    served = Model.load(published)
    trained = MLP.from_artifact(published)
    pixels = np.random.default_rng(0).integers(0, 256, (50, 784))
    np.testing.assert_allclose(served.predict_proba(pixels.astype(np.float32)), trained.predict_proba(pixels),
                               atol=1e-6)
    assert served.version == 1 and served.sha256 == trained.manifest["weights"]["sha256"]


def test_what_the_trainer_publishes_follows_the_documented_manifest(published):
    manifest, arrays = format.load(published)
    assert manifest["architecture"]["layer_sizes"] == [784, 12, 8, 10]
    assert set(manifest) >= {"format_version", "name", "version", "created", "architecture", "input", "labels",
                             "weights", "training", "dataset", "metrics", "code_version", "library_versions"}
    assert manifest["weights"]["arrays"] == {k: {"shape": list(a.shape), "dtype": "float32"} for k, a in arrays.items()}
    assert manifest["weights"]["sha256"] == format.sha256_file(published / "weights.npz")
