"""Service test fixtures: a model directory, a Flask test client, real gunicorn servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_helpers import Server, make_app, write_version


@pytest.fixture
def model_dir(tmp_path) -> Path:
    write_version(tmp_path, 1)
    return tmp_path


@pytest.fixture
def client(model_dir):
    return make_app(model_dir).test_client()


@pytest.fixture
def serve(tmp_path):
    """serve(model_dir, **env) starts a server; all are stopped at the end of the test."""
    servers = []

    def start(model_dir: Path, workers: int = 2, **env) -> Server:
        metrics_dir = tmp_path / f"metrics-{len(servers)}"
        metrics_dir.mkdir()
        server = Server(model_dir, metrics_dir, workers, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(graceful=False)
