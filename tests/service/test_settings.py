"""settings.Settings: everything the service reads from the environment, validated once, used by
the app, gunicorn's configuration and the healthcheck alike."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_artifact.repository import S3Location
from mnist_service.settings import Settings

CLEAN = {k: v for k, v in os.environ.items() if k not in {
    "MODEL_DIR", "MODEL_NAME", "MODEL_VERSION", "MODEL_POLL_SECONDS", "MAX_BATCH", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS",
    "LOG_LEVEL", "HOST", "PORT", "WORKERS", "WORKER_CLASS", "THREADS", "TIMEOUT", "GRACEFUL_TIMEOUT",
    "WORKER_CONNECTIONS", "CLIENT_TIMEOUT", "KEEPALIVE", "QUEUE_LIMIT", "QUEUE_TIMEOUT", "QUEUE_TIMEOUT_MAX",
    "BACKLOG"}}


def test_defaults_and_every_variable():
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env({
        "MODEL_DIR": "/m", "MODEL_NAME": "digits", "MODEL_VERSION": "3", "MODEL_POLL_SECONDS": "0.5",
        "MAX_BATCH": "8", "MAX_BODY_BYTES": "1000", "MAX_IMAGE_PIXELS": "99", "LOG_LEVEL": "debug",
        "HOST": "127.0.0.1", "PORT": "9000", "WORKERS": "3", "WORKER_CLASS": "GTHREAD", "THREADS": "4",
        "TIMEOUT": "60", "GRACEFUL_TIMEOUT": "45", "WORKER_CONNECTIONS": "50", "CLIENT_TIMEOUT": "2.5",
        "KEEPALIVE": "2", "QUEUE_TIMEOUT": "0.2", "QUEUE_TIMEOUT_MAX": "1", "BACKLOG": "100"})
    assert settings == Settings(model_dir=Path("/m"), model_name="digits", model_version=3, model_poll_seconds=0.5,
                                max_batch=8, max_body_bytes=1000, max_image_pixels=99, log_level="DEBUG",
                                host="127.0.0.1", port=9000, workers=3, worker_class="gthread", threads=4,
                                timeout=60, graceful_timeout=45, worker_connections=50, client_timeout=2.5,
                                keepalive=2, queue_timeout=0.2, queue_timeout_max=1.0, backlog=100)


@pytest.mark.parametrize("variable, value", [
    ("WORKERS", "two"), ("WORKERS", "0"), ("PORT", "70000"), ("PORT", "80.5"), ("THREADS", "-1"), ("TIMEOUT", "0"),
    ("GRACEFUL_TIMEOUT", "soon"), ("MODEL_POLL_SECONDS", "nan"), ("MODEL_POLL_SECONDS", "inf"),
    ("MODEL_VERSION", "0"), ("MAX_BATCH", "1e3"), ("WORKER_CLASS", "eventlet"), ("LOG_LEVEL", "loud"),
    ("CLIENT_TIMEOUT", "0"), ("KEEPALIVE", "-1"), ("KEEPALIVE", "2.5"), ("QUEUE_TIMEOUT", "-1"),
    ("QUEUE_TIMEOUT_MAX", "0"), ("BACKLOG", "0"),
    ("WORKER_CONNECTIONS", "many"), ("GRPC_PORT", "65536"), ("GRPC_PORT", "-1"), ("GRPC_WORKERS", "0"),
    ("GRPC_MAX_CONNECTION_IDLE", "0"), ("GRPC_MAX_CONNECTION_AGE", "never"),
    ("PAYLOAD_LOG_URL", "gs://bucket/logs"), ("PAYLOAD_LOG_URL", "http:///events"), ("PAYLOAD_LOG_EVENTS", "both"),
    ("PAYLOAD_LOG_SAMPLE_RATE", "1.5"), ("PAYLOAD_LOG_FAILED", "maybe"), ("PAYLOAD_LOG_DATA", "2"),
    ("PAYLOAD_LOG_QUEUE_EVENTS", "0"), ("PAYLOAD_LOG_QUEUE_BYTES", "lots"), ("PAYLOAD_LOG_TIMEOUT", "0"),
    ("PAYLOAD_LOG_RETRIES", "-1"), ("PAYLOAD_LOG_BATCH_SECONDS", "0"), ("DRIFT_WINDOW", "-5"),
])
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ValueError, match=f"^{variable}=") as error:
        Settings.from_env({variable: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("uri", ["gs://bucket", "S3://x", "s3:/models/repo", "az://container/models"])
def test_an_unsupported_uri_is_refused_rather_than_served_from_a_local_folder(uri):
    with pytest.raises(ValueError, match=f"^MODEL_DIR '{uri}': unsupported scheme"):
        Settings.from_env({"MODEL_DIR": uri})


def test_payload_log_locations_and_switches():
    assert Settings.from_env({}).payload_log_url is None  # off by default
    assert Settings.from_env({"PAYLOAD_LOG_URL": "https://broker.example/ns"}).payload_log_url == \
        "https://broker.example/ns"
    assert Settings.from_env({"PAYLOAD_LOG_URL": "logs/payloads"}).payload_log_url == Path("logs/payloads")
    assert Settings.from_env({"PAYLOAD_LOG_URL": "file:///var/log/p"}).payload_log_url == Path("/var/log/p")
    assert Settings.from_env({"PAYLOAD_LOG_URL": "s3://bucket/p"}).payload_log_url == S3Location("bucket", "p")
    settings = Settings.from_env({"PAYLOAD_LOG_EVENTS": "Response", "PAYLOAD_LOG_FAILED": "no",
                                  "PAYLOAD_LOG_DATA": "OFF", "PAYLOAD_LOG_SAMPLE_RATE": "0.1", "DRIFT_WINDOW": "0",
                                  "POD_NAMESPACE": "team-a"})
    assert (settings.payload_log_events, settings.payload_log_failed, settings.payload_log_data) == \
        ("response", False, False)
    assert (settings.payload_log_sample_rate, settings.drift_window, settings.pod_namespace) == (0.1, 0, "team-a")


def test_a_bucket_is_a_model_dir():
    settings = Settings.from_env({"MODEL_DIR": "s3://models/prod/", "MODEL_CACHE_DIR": "/cache"})
    assert settings.model_dir == S3Location("models", "prod") and settings.model_cache_dir == Path("/cache")


def test_grpc_needs_a_port_of_its_own_or_none():
    with pytest.raises(ValueError, match="^GRPC_PORT=8000 is PORT's too"):
        Settings.from_env({"PORT": "8000", "GRPC_PORT": "8000"})
    assert Settings.from_env({"GRPC_PORT": "0"}).grpc_port == 0  # off
    assert Settings.from_env({}).grpc_port == 8081  # KServe's default


def test_the_retired_queue_limit_is_refused_rather_than_ignored():
    with pytest.raises(ValueError, match="^QUEUE_LIMIT is no longer read: .*QUEUE_TIMEOUT"):
        Settings.from_env({"QUEUE_LIMIT": "128"})
    assert Settings.from_env({"QUEUE_LIMIT": ""}) == Settings()  # docker-compose.yml passes empty values


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "mnist_service.process.cli"],
    [sys.executable, "-m", "gunicorn", "-c", "python:mnist_service.process.gunicorn_config",
     "mnist_service.http.app:create_app()"],
], ids=["mnist-serve", "gunicorn-by-hand"])
def test_a_bad_value_stops_the_server_with_one_line(command, tmp_path):
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**CLEAN, "WORKERS": "two", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert result.stderr.strip() == "mnist-serve: WORKERS='two' is not a valid int"


def test_gunicorn_takes_its_settings_from_the_same_object(monkeypatch):
    for variable, value in {"HOST": "127.0.0.2", "PORT": "8123", "WORKERS": "3", "WORKER_CLASS": "gthread",
                            "THREADS": "2", "TIMEOUT": "40", "GRACEFUL_TIMEOUT": "12"}.items():
        monkeypatch.setenv(variable, value)
    config = importlib.reload(importlib.import_module("mnist_service.process.gunicorn_config"))
    assert (config.bind, config.workers, config.worker_class, config.threads, config.timeout,
            config.graceful_timeout) == ("127.0.0.2:8123", 3, "gthread", 2, 40, 12)
    monkeypatch.setenv("WORKER_CLASS", "gevent")
    monkeypatch.setenv("WORKER_CONNECTIONS", "64")
    monkeypatch.setenv("BACKLOG", "512")
    config = importlib.reload(config)
    assert (config.worker_class, config.worker_connections, config.backlog, config.keepalive) == (
        "mnist_service.process.worker.Worker", 64, 512, 0)  # one request per connection
    monkeypatch.setenv("KEEPALIVE", "5")
    assert importlib.reload(config).keepalive == 5
