"""mnist-mlp artifact: the format the trainer publishes and the service serves (docs/artifact.md),
its forward pass, and the MNIST-style preprocessing of pictures that both apply."""

from .format import ArtifactError
from .model import Model

__version__ = "0.1.0"
__all__ = ["ArtifactError", "Model", "__version__"]
