"""The forward pass of docs/artifact.md: what every reader of a published version runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import format
from .profile import Profile


class Model:
    """One verified version: normalise pixels, ReLU hidden layers, softmax output, in float32."""

    def __init__(self, manifest: dict, arrays: dict[str, np.ndarray]):
        self.manifest = manifest
        self.name, self.version = manifest["name"], manifest["version"]
        self.sha256 = manifest["weights"]["sha256"]
        n_layers = len(manifest["architecture"]["layer_sizes"]) - 1
        self.weights = [arrays[f"W{l}"] for l in range(1, n_layers + 1)]
        self.biases = [arrays[f"b{l}"] for l in range(1, n_layers + 1)]
        self.dtype = np.result_type(self.weights[0], np.float32)  # float32 as published; float64 if the weights are
        spec = manifest["input"]
        self.scale, self.mean, self.std = (np.float32(spec[k]) for k in ("scale", "mean", "std"))
        # The reference that live traffic's drift is measured against; None for versions published without one
        self.profile: Profile | None = (Profile(manifest["profile"], f"{self.name} version {self.version}: profile")
                                        if "profile" in manifest else None)

    @classmethod
    def load(cls, directory: Path) -> Model:
        """Read and verify MODEL_DIR/<name>/<version>; raises format.ArtifactError."""
        return cls(*format.load(directory))

    def logits(self, pixels: np.ndarray, active: list | None = None) -> np.ndarray:
        """The pre-softmax outputs (N, 10) for pixels (N, 784) on the 0..255 scale, MNIST polarity.
        `active`, if given, receives each hidden layer's mask of units that are on (for gradients)."""
        x = np.multiply(pixels, self.scale, dtype=self.dtype)
        x -= self.mean
        x /= self.std
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w
            x += b
            if l < last:
                np.maximum(x, 0, out=x)
                if active is not None:
                    active.append(x > 0)
        return x

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for pixels (N, 784) on the 0..255 scale, MNIST polarity."""
        x = self.logits(pixels)
        x -= x.max(axis=1, keepdims=True)  # softmax = exp(z - logsumexp(z)), stable for any z
        x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
        return np.exp(x, out=x)
