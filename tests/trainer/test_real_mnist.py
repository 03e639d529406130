"""One real training run on the official MNIST files (MNIST_DIR; scripts/test points it at ../shared)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_train_and_evaluate_on_real_mnist(mnist_dir, tmp_path):
    train = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "train", "--data", mnist_dir,
                            "--model-dir", tmp_path, "--preset", "fast", "--epochs", "2"],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout)
    assert summary["test_accuracy"] > 0.96  # 784-256-10, 2 epochs: about 97.5 %
    manifest = json.loads((tmp_path / "mnist" / "1" / "manifest.json").read_text())
    assert manifest["dataset"]["test_size"] == 10_000 and manifest["dataset"]["train_size"] == 55_000

    evaluate = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "evaluate", "--data", mnist_dir,
                               "--model-dir", tmp_path], capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads(evaluate.stdout)["test_accuracy"] == summary["test_accuracy"]
