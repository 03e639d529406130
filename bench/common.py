"""What the benchmarks share: bench/bench.py (run in .bench-venv) and bench/service/*.py (run in .venv).

Log lines, Markdown tables, the MNIST data, how busy the machine is, the environment of a run and
the JSON output. Needs NumPy, psutil and (for the data) mnist_trainer, which both environments have.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUSY = 0.25  # CPU cores used by other processes during a measurement above which it is suspect


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- data --------------------------------------------------------------------------------------

def mnist_path(path: str | None) -> str:
    """--data, else $MNIST_DIR, else the shared copy beside the checkout (never a download)."""
    path = path or os.environ.get("MNIST_DIR")
    if not path and (REPO.parent / "shared/data/mnist").is_dir():
        path = REPO.parent / "shared/data/mnist"
    if not path:
        sys.exit("bench: no MNIST data: pass --data DIR or set MNIST_DIR")
    return str(path)


def load_mnist(path: str | None):
    """The data.MNIST of mnist_path(path); a missing or broken data set ends the run with its message."""
    from mnist_trainer import data

    try:
        return data.load(mnist_path(path))
    except data.DataError as e:
        sys.exit(f"bench: {e}")


# --- CPU ---------------------------------------------------------------------------------------

def machine_busy_seconds() -> float:
    """CPU seconds used so far by everything on the machine: every state but idle and iowait."""
    import psutil  # here, not above: `bench/run memory` measures the trainer's imports without it

    times = psutil.cpu_times()
    return sum(getattr(times, state, 0.0) for state in ("user", "nice", "system", "irq", "softirq", "steal"))


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process."""
    own = os.times()
    return own.user + own.system


def wait_quiet(minutes: float, cores: float = 0.2, window: float = 10) -> float:
    """Wait (up to `minutes`) until the rest of the machine uses < `cores` over `window` seconds; returns
    the cores it used in the last window. Run before starting any server: all but this process counts."""
    deadline = time.monotonic() + minutes * 60
    while True:
        busy, own = machine_busy_seconds(), own_cpu_seconds()
        time.sleep(window)
        other = max(0.0, machine_busy_seconds() - busy - (own_cpu_seconds() - own)) / window
        if other < cores:
            log(f"bench: the machine is quiet: other processes {other:.2f} cores over {window:g} s")
            return other
        if time.monotonic() > deadline:
            log(f"bench: still busy after {minutes:g} minutes (other processes {other:.2f} cores): measuring anyway")
            return other
        log(f"bench: waiting for a quiet machine: other processes {other:.2f} cores")


# --- results -----------------------------------------------------------------------------------

def environment(**versions) -> dict:
    """Date, Python, machine, CPUs and NumPy of this run, then the `versions` given."""
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "numpy": np.__version__, **versions}


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {path}")
