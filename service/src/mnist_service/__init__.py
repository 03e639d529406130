"""mnist-mlp service: serves the trainer's weights artifact over HTTP (docs/artifact.md)."""

__version__ = "0.1.0"
