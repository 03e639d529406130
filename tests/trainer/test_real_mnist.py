"""One real training run on the official MNIST files (MNIST_DIR; scripts/test points it at ../shared)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mnist_artifact.model import Model
from mnist_trainer import MLP, data
from mnist_trainer.nn import softmax
from mnist_trainer.train import MEAN, PIXEL_SCALE, STD, TrainConfig, to_input

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


def test_new_hyperparameters_are_recorded_in_the_manifest(mnist_dir, tmp_path):
    train = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "train", "--data", mnist_dir,
                            "--model-dir", tmp_path, "--preset", "fast", "--epochs", "1", "--hidden", "128,64",
                            "--batch-norm", "--ema", "0.99", "--label-smoothing", "0.1", "--optimizer", "rmsprop",
                            "--lr", "0.001", "--augment", "elastic"],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    manifest = json.loads((tmp_path / "mnist" / "1" / "manifest.json").read_text())
    asked = {"batch_norm": True, "ema": 0.99, "label_smoothing": 0.1, "optimizer": "rmsprop", "augment": "elastic"}
    assert manifest["training"]["hyperparameters"] | asked == manifest["training"]["hyperparameters"]
    assert manifest["architecture"]["layer_sizes"] == [784, 128, 64, 10]  # plain layers: batch norm folded
    assert json.loads(train.stdout)["test_accuracy"] > 0.9  # one epoch of strong distortions: about 93 %


def test_folding_batch_norm_keeps_the_logits_on_real_test_images(mnist_dir):
    mnist = data.load(mnist_dir)
    config = TrainConfig(hidden=(256, 128), epochs=1, batch_norm=True, ema=0.99)
    model = MLP(config=config).fit(mnist.train.images, mnist.train.labels)
    x = to_input(mnist.test.images)
    trained, folded = model.network.logits(x), model.network.folded().logits(x)
    assert (trained.argmax(axis=1) == mnist.test.labels).mean() > 0.95
    np.testing.assert_allclose(folded, trained, rtol=1e-5, atol=1e-5)
    # and the published arrays through the artifact library's forward pass (the service's)
    served = Model({"name": "mnist", "version": 1, "weights": {"sha256": ""},
                    "architecture": {"layer_sizes": [784, 256, 128, 10]},
                    "input": {"scale": PIXEL_SCALE, "mean": MEAN, "std": STD}}, model.arrays())
    np.testing.assert_allclose(served.predict_proba(mnist.test.images.reshape(-1, 784)), softmax(trained),
                               rtol=1e-4, atol=1e-6)
