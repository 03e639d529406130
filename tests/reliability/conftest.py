"""Fixtures of the reliability suite (scripts/reliability): a version trained by the real
`mnist-train` on real MNIST, real digits, `mnist-serve` with 2 workers, and the figures it reports."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

# The reliability tests reuse the service tests' helpers (artifacts, images, servers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from reliability_helpers import WORKERS, CpuMeter, train  # noqa: E402

from service_helpers import Server  # noqa: E402


@pytest.fixture(scope="session")
def trained(mnist_dir, tmp_path_factory) -> Path:
    """A models directory holding version 1, trained on real MNIST (a few seconds)."""
    models = tmp_path_factory.mktemp("trained")
    train(mnist_dir, models, seed=0)
    return models


@pytest.fixture
def model_dir(trained, tmp_path) -> Path:
    """This test's own copy of the trained models directory (it may publish into it)."""
    return Path(shutil.copytree(trained, tmp_path / "models"))


@pytest.fixture(scope="session")
def digits(mnist_dir):
    """Real MNIST test digits, uint8 (16, 28, 28)."""
    from mnist_trainer import data  # tests may use the trainer; the service never does

    return data.load(mnist_dir).test.images[:16]


@pytest.fixture
def serve(tmp_path):
    """serve(model_dir) starts `mnist-serve` with WORKERS workers; stopped (SIGTERM) at the end of the test."""
    servers = []

    def start(model_dir: Path, **env) -> Server:
        metrics_dir = tmp_path / f"metrics-{len(servers)}"
        metrics_dir.mkdir()
        servers.append(Server(model_dir, metrics_dir, WORKERS, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


# -- figures -------------------------------------------------------------------------------------

class Figures:
    """Every number the suite measures, in order: printed at the end and written as Markdown to
    $RELIABILITY_REPORT when it is set."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []
        self.cpu = CpuMeter().start()

    def add(self, case: str, name: str, value) -> None:
        text = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        self.rows.append((case, name, text))
        print(f"  [{case}] {name}: {text}", flush=True)

    def markdown(self) -> str:
        cpu = self.cpu.stop()
        lines = [f"Reliability suite, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {psutil.cpu_count()} cores, "
                 f"{cpu['seconds']:.0f} s in all; meanwhile the suite used {cpu['ours_cores']:.2f} cores on "
                 f"average and other processes {cpu['others_cores']:.2f} (psutil).", "",
                 "| case | figure | value |", "|---|---|---|"]
        lines += [f"| {case} | {name} | {value} |" for case, name, value in self.rows]
        return "\n".join(lines) + "\n"


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if not FIGURES.rows:
        return
    text = FIGURES.markdown()
    terminalreporter.section("reliability figures")
    terminalreporter.write(text)
    report = os.environ.get("RELIABILITY_REPORT")
    if report:
        Path(report).write_text(text)
        terminalreporter.write_line(f"written to {report}")
