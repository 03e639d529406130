"""The artifact's forward pass (docs/artifact.md) for the benchmark's comparison servers.

bare_app.py (in .venv) and mlserver_runtime.py (in .bench-mlserver-venv, where mnist_service is not
installed) both use this, so every server runs the same NumPy operations in the same order as
mnist_service.inference.Model.predict_proba. Needs only NumPy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class MLP:
    def __init__(self, version_dir: str | Path):
        version_dir = Path(version_dir)
        self.manifest = json.loads((version_dir / "manifest.json").read_text())
        self.name, self.version = self.manifest["name"], self.manifest["version"]
        n_layers = len(self.manifest["architecture"]["layer_sizes"]) - 1
        with np.load(version_dir / self.manifest["weights"]["file"], allow_pickle=False) as npz:
            self.weights = [npz[f"W{l}"] for l in range(1, n_layers + 1)]
            self.biases = [npz[f"b{l}"] for l in range(1, n_layers + 1)]
        spec = self.manifest["input"]
        self.scale, self.mean, self.std = (np.float32(spec[k]) for k in ("scale", "mean", "std"))

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for pixels (N, 784) on the 0..255 scale; float32 throughout."""
        x = np.multiply(pixels, self.scale, dtype=np.float32)
        x -= self.mean
        x /= self.std
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w
            x += b
            if l < last:
                np.maximum(x, 0, out=x)
        x -= x.max(axis=1, keepdims=True)
        x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
        return np.exp(x, out=x)


def latest_version(model_dir: str | Path, name: str) -> Path:
    """The highest-numbered version directory of MODEL_DIR/<name>/ (what mnist-serve serves)."""
    versions = [p for p in Path(model_dir, name).iterdir() if p.name.isdigit() and (p / "manifest.json").is_file()]
    if not versions:
        raise FileNotFoundError(f"no published version under {Path(model_dir, name)}")
    return max(versions, key=lambda p: int(p.name))
