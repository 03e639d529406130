"""Helpers of the reliability cases: training a version, asking the server, reading its log and its processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from service_helpers import metric_total

WORKERS = 2  # as deployed on 2 cores
MNIST_TRAIN = str(Path(sys.executable).with_name("mnist-train"))


def train(mnist_dir: Path, model_dir: Path, seed: int) -> dict:
    """`mnist-train train --preset fast` into model_dir: publishes the next version. Its JSON summary."""
    result = subprocess.run([MNIST_TRAIN, "train", "--data", str(mnist_dir), "--model-dir", str(model_dir),
                             "--preset", "fast", "--seed", str(seed)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def serving_version(url: str) -> int | None:
    response = requests.get(url + "/readyz", timeout=5)
    return response.json()["model"]["version"] if response.status_code == 200 else None


def served_by_all_workers(url: str, version: int) -> bool:
    """Several answers in a row name `version` (each connection goes to either worker)."""
    return all(serving_version(url) == version for _ in range(6))


def log_entries(server, needle: str, offset: int = 0) -> list[dict]:
    """The server's JSON log lines (from byte `offset`) that contain `needle`; cheaper than parsing
    a log that holds an access line for every request of a load test."""
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    entries = []
    for line in lines:
        if needle in line:
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line still being written
                continue
    return entries


class TotalScraper:
    """Scrapes sum(mnist_http_requests_total) every 0.1 s in a thread while the block runs, and once
    more when it ends: a scrape taken while a load generator stops can miss its last answers."""

    def __init__(self, url: str):
        self.url, self.totals, self.failures = url, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self._scrape()
            time.sleep(0.1)

    def _scrape(self) -> None:
        try:
            self.totals.append(metric_total(self.url, "mnist_http_requests_total"))
        except requests.RequestException as e:
            self.failures.append(repr(e))

    def __enter__(self) -> TotalScraper:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self._scrape()


# -- processes -------------------------------------------------------------------------------------

def server_processes(pid: int) -> list[psutil.Process]:
    """gunicorn's master and its workers."""
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


def rss_mb(pid: int) -> float:
    """Resident memory of the master and the workers, in MB."""
    total = 0
    for process in server_processes(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1e6


class CpuMeter:
    """CPU seconds used between start() and stop() by this process and its descendants (the servers,
    wrk, the trainer) and by every other process on the machine ("others")."""

    def start(self) -> CpuMeter:
        self.wall, self.busy, self.ours = time.monotonic(), _busy(), _ours()
        return self

    def stop(self) -> dict[str, float]:
        wall, busy, ours = time.monotonic() - self.wall, _busy() - self.busy, _ours() - self.ours
        return {"seconds": wall, "ours_cores": ours / wall, "others_cores": max(0.0, busy - ours) / wall}


def _busy() -> float:
    t = psutil.cpu_times()  # guest time is already inside user time on Linux
    return t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq", "steal"))


def _ours() -> float:
    """CPU seconds of this process and every descendant, live or reaped (a reaped child's time is in
    its parent's children_user/children_system)."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total
