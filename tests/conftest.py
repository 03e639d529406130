"""Fixtures shared by the trainer and service tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files ($MNIST_DIR). Skipped locally without them; in CI their absence fails."""
    directory = os.environ.get("MNIST_DIR")
    if directory and Path(directory).is_dir():
        return Path(directory)
    message = "real MNIST needed: set MNIST_DIR (scripts/test uses ../shared/data/mnist when present)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
