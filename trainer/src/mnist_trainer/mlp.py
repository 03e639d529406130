"""The library API: an estimator in the style people know from scikit-learn.

    from mnist_trainer import MLP
    model = MLP(hidden=(512,), epochs=20, dropout=0.2).fit(x_train, y_train, validation=(x_val, y_val))
    model.evaluate(x_test, y_test)  # {"accuracy": ..., "loss": ...}
    MLP.from_artifact("models/mnist/3").predict(x)

Inputs are raw pixels 0..255, shape (N, 28, 28) or (N, 784); normalisation happens inside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_artifact import format

from .nn import Network, cross_entropy, softmax
from .train import TrainConfig, fit, to_input


class MLP:
    def __init__(self, hidden=None, *, config: TrainConfig | None = None, **hyperparameters):
        """`hidden` and keyword hyperparameters override `config` (default: TrainConfig())."""
        if hidden is not None:
            hyperparameters["hidden"] = tuple(hidden)
        self.config = (config or TrainConfig()).replace(**hyperparameters)
        self.network: Network | None = None
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.training_seconds: float | None = None

    def fit(self, x, y, validation=None, **callbacks) -> MLP:
        """Train on pixels x and labels y; `validation=(x_val, y_val)` selects the best epoch.

        Keyword callbacks (on_epoch, on_batch, should_stop) are passed to train.fit.
        """
        images = np.asarray(x).reshape(len(x), 28, 28)
        if validation is not None:
            validation = (np.asarray(validation[0]).reshape(-1, 28, 28), np.asarray(validation[1]))
        result = fit(images, np.asarray(y), self.config, validation=validation, **callbacks)
        self.network, self.history = result.network, result.history
        self.best_epoch, self.training_seconds = result.best_epoch, result.seconds
        return self

    def _logits(self, x) -> np.ndarray:
        if self.network is None:
            raise RuntimeError("this MLP is not trained: call fit() or load an artifact")
        return self.network.logits(to_input(np.asarray(x)))

    def predict_proba(self, x) -> np.ndarray:
        return softmax(self._logits(x))

    def predict(self, x) -> np.ndarray:
        return self._logits(x).argmax(axis=1)

    def evaluate(self, x, y) -> dict:
        logits = self._logits(x)
        y = np.asarray(y)
        return {"accuracy": float((logits.argmax(axis=1) == y).mean()), "loss": cross_entropy(logits, y)}

    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters under the artifact's names (W1, b1, W2, b2, ...), batch norm folded in."""
        folded = self.network.folded()
        return dict(zip(format.weight_names(len(folded.weights)), folded.params))

    @classmethod
    def from_artifact(cls, path) -> MLP:
        """Load a published version directory (MODEL_DIR/<name>/<version>)."""
        return cls.from_verified(*format.load(Path(path)))

    @classmethod
    def from_verified(cls, manifest: dict, arrays: dict[str, np.ndarray]) -> MLP:
        """A model from a version that format.load (or a repository) has verified."""
        n_layers = len(manifest["architecture"]["layer_sizes"]) - 1
        weights = [arrays[f"W{l}"] for l in range(1, n_layers + 1)]
        biases = [arrays[f"b{l}"] for l in range(1, n_layers + 1)]
        hp = manifest.get("training", {}).get("hyperparameters", {})
        model = cls(hidden=manifest["architecture"]["layer_sizes"][1:-1],
                    **{k: v for k, v in hp.items() if k != "hidden" and k in TrainConfig.__dataclass_fields__})
        model.network = Network(weights, biases)
        model.manifest = manifest
        return model
