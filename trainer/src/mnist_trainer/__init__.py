"""mnist-mlp trainer: a NumPy multilayer perceptron for MNIST that publishes versioned artifacts."""

__version__ = "0.1.0"

from .mlp import MLP  # noqa: E402  (the library API)

__all__ = ["MLP", "__version__"]
