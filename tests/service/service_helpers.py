"""Service test helpers: artifacts written as docs/artifact.md says, test images, a real gunicorn."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from artifact_files import random_arrays
from mnist_artifact import Model
from mnist_artifact.profile import build_profile
from mnist_service.http.app import create_app
from mnist_service.settings import Settings


def write_version(model_dir: Path, version: int, *, name: str = "mnist", sizes=(784, 16, 10), seed: int = 0,
                  arrays: dict | None = None) -> Path:
    """Publish a version exactly as docs/artifact.md specifies (random weights unless given)."""
    if arrays is None:
        arrays = random_arrays(sizes, seed)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    staging = model_dir / name / f".publishing-{version}"
    staging.mkdir(parents=True)
    (staging / "weights.npz").write_bytes(buffer.getvalue())
    manifest = {
        "format_version": 1, "name": name, "version": version, "created": "2026-11-23T00:00:00Z",
        "architecture": {"type": "mlp", "layer_sizes": list(sizes), "activation": "relu", "output": "softmax"},
        "input": {"shape": [28, 28], "layout": "row-major", "pixel_range": [0, 255],
                  "scale": 1 / 255, "mean": 0.1307, "std": 0.3081, "formula": "x = (pixel * scale - mean) / std"},
        "labels": [str(d) for d in range(10)],
        "weights": {"file": "weights.npz", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()},
        "metrics": {"validation": {"accuracy": 0.5, "loss": 1.0}, "test": {"accuracy": 0.5, "loss": 1.0}},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest))
    final = model_dir / name / str(version)
    staging.rename(final)
    return final


def add_profile(version_dir: Path, pixels: np.ndarray) -> None:
    """Give a published version the reference profile the trainer writes, computed on `pixels`."""
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["profile"] = build_profile(pixels, Model.load(version_dir).predict_proba(pixels))
    manifest_path.write_text(json.dumps(manifest))


def varied_digits(n: int, seed: int = 0) -> np.ndarray:
    """n digit-like images (N, 784) on 0..255: rings of random size, place, thickness and darkness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    images = []
    for _ in range(n):
        cy, cx, radius, width, dark = rng.uniform(12, 16), rng.uniform(12, 16), rng.uniform(5, 9), \
            rng.uniform(1.5, 3.5), rng.uniform(0.6, 1)
        ring = 1 - np.abs(np.hypot(yy - cy, (xx - cx) * 1.3) - radius) / width
        images.append(np.clip(ring * dark * 255, 0, 255).round().reshape(-1))
    return np.stack(images).astype(np.float32)


def make_app(model_dir: Path, **settings):
    return create_app(Settings(model_dir=model_dir, model_poll_seconds=0, **settings))


def digit(seed: int = 0) -> np.ndarray:
    """A digit-like 28x28 uint8 image in MNIST form: a thick ring ("0"), jittered."""
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 14 + seed % 3, (xx - 14) * 1.4)
    return np.clip((1 - np.abs(r - 7) / 2.5) * 255, 0, 255).astype(np.uint8)


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def expected(model_dir, pixels, version=1):
    model = Model.load(model_dir / "mnist" / str(version))
    return model.predict_proba(np.asarray(pixels, np.float32).reshape(-1, 784))


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels: a few KB on the wire, 400 M pixels decoded."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    row = b"\0" + b"\0" * (side // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: held together while they are chosen, since the kernel may
    hand out a port again as soon as its socket is closed."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


class Server:
    """`mnist-serve` (gunicorn, real workers) on a loopback port; with `grpc_workers`, its gRPC server
    processes too, on another (`grpc_target`)."""

    def __init__(self, model_dir: Path, metrics_dir: Path, workers: int = 2, grpc_workers: int = 0, **env):
        self.workers, self.grpc_workers = workers, grpc_workers
        self.port, grpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = grpc_port if grpc_workers else 0
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = metrics_dir.parent / f"server-{self.port}.log"
        environment = {**os.environ, "MODEL_DIR": str(model_dir), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                       "HOST": "127.0.0.1", "PORT": str(self.port), "WORKERS": str(workers),
                       "GRPC_PORT": str(self.grpc_port), "GRPC_WORKERS": str(max(grpc_workers, 1)),
                       "MODEL_POLL_SECONDS": "0.2", **{k: str(v) for k, v in env.items()}}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "mnist_service.process.cli"], env=environment,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()  # a server that did not come up must not outlive the test
            raise

    def _wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mnist-serve exited {self.process.returncode}: {self.log_path.read_text()}")
            logs = self.logs()
            ready = {e["pid"] for e in logs if e.get("message") == "app ready"}
            grpc_ready = {e["pid"] for e in logs if e.get("message") == "gRPC server ready"}
            if len(ready) >= self.workers and len(grpc_ready) >= self.grpc_workers:  # every process has its model
                return
            time.sleep(0.1)
        raise RuntimeError(f"mnist-serve did not start: {self.log_path.read_text()}")

    def logs(self) -> list[dict]:
        """The server's JSON log lines so far (a line still being written is left for next time)."""
        entries = []
        for line in self.log_path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def stop(self, graceful: bool = True) -> int:
        """SIGTERM: drain, as Kubernetes stops a pod. graceful=False, for fixtures' teardown: SIGINT,
        which gunicorn's workers obey at once instead of at their next 1 s heartbeat."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGINT)
            self.process.wait(30)
        self.log.close()
        return self.process.returncode


def wait_for(condition, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def metric_total(url: str, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total
