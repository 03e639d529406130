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


@pytest.fixture(scope="session")
def s3_server():
    """One S3 server on loopback for the whole session (tests/s3_server.py)."""
    from s3_server import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_uri(s3_server, monkeypatch) -> str:
    """s3://<a new bucket>/models, with this process's AWS_* variables pointing at the server."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return f"s3://{s3_server.new_bucket()}/models"
