"""Fixtures shared by the trainer and service tests."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
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


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A directory that every worker of this run shares (pytest -n: the workers' common base)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(directory: Path, build) -> Path:
    """`directory`, made by build(directory) by the first worker of the run to ask; the others wait
    for it and reuse it. For expensive fixtures that tests only read."""
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / ".built").exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            build(directory)
            (directory / ".built").touch()
    return directory


@pytest.fixture(scope="session")
def trained_model_dir(mnist_dir, shared_tmp) -> Path:
    """A model that really recognises digits, trained once a run by `mnist-train` on real MNIST (the
    fast preset, 3 epochs) into <dir>/mnist/1. Tests only read it."""

    def train(model_dir: Path) -> None:
        result = subprocess.run([sys.executable, "-m", "mnist_trainer.cli", "train", "--data", str(mnist_dir),
                                 "--model-dir", str(model_dir), "--preset", "fast", "--epochs", "3"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr

    return build_once(shared_tmp / "trained-model", train)
