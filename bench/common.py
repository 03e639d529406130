"""What every benchmark shares: log lines, tables, percentiles, the MNIST data, CPU accounting and pinning,
the machine's speed and factor, tool versions and the JSON output. Needs NumPy and psutil (.venv and
.bench-venv both have them) and, for the data, mnist_trainer."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUSY = 0.25  # CPU cores used by other processes during a measurement above which it is suspect
BENCH_PYTHON = REPO / ".bench-venv/bin/python"  # bench/run's environment, the one with PyTorch
# `bench/run speed`'s PyTorch case on the reference machine of 2026-12-01: the yardstick of every
# wall-clock budget (bench/README.md, "Budgets and the machine factor").
REFERENCE_SAMPLES_PER_SECOND = 165_928
YARDSTICK_RUNS = 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def table(rows: list[dict], columns: list[tuple]) -> str:
    """A Markdown table of `rows`: each column a header and a str.format template of the row (or a function of it)."""
    return markdown_table([header for header, _ in columns],
                          [[f(row) if callable(f) else f.format_map(row) for _, f in columns] for row in rows])


def percentile(values, q: float) -> float | None:
    """The q-th percentile by nearest rank: the ceil(q/100 * n)-th smallest of the n values (None if
    there are none). The one definition of every percentile the benchmarks compute themselves."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else None


def latency_ms(values_ms) -> dict:
    """p50, p90, p99 (percentile above) and max of latencies in milliseconds."""
    return {"p50": percentile(values_ms, 50), "p90": percentile(values_ms, 90), "p99": percentile(values_ms, 99),
            "max": max(values_ms, default=None)}


def random_arrays(sizes: list[int], seed: int) -> dict[str, np.ndarray]:
    """W1, b1, ..., WL, bL of a network of `sizes`: float32, He-scaled, random (what a forward pass or a
    download costs does not depend on what the weights learned)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        arrays[f"W{l}"] = (rng.standard_normal((n_in, n_out), dtype=np.float32) * np.sqrt(2 / n_in)).astype(np.float32)
        arrays[f"b{l}"] = (rng.standard_normal(n_out, dtype=np.float32) * 0.1).astype(np.float32)
    return arrays


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


def machine_busy_seconds() -> float:
    """CPU seconds used so far by everything on the machine: every state but idle and iowait."""
    import psutil  # here, not above: `bench/run memory` measures the trainer's imports without it

    times = psutil.cpu_times()
    return sum(getattr(times, state, 0.0) for state in ("user", "nice", "system", "irq", "softirq", "steal"))


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process."""
    own = os.times()
    return own.user + own.system


class Others:
    """How many cores other processes (everything but this one) used since it was made."""

    def __init__(self):
        self.started, self.busy, self.own = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()

    def cores(self, minus: float = 0.0) -> float:
        """Cores over the window; `minus` CPU seconds (e.g. servers of this run's) not counted as others'."""
        used = machine_busy_seconds() - self.busy - (own_cpu_seconds() - self.own) - minus
        return max(0.0, used) / max(1e-9, time.perf_counter() - self.started)


def wait_quiet(minutes: float, cores: float = 0.2, window: float = 10) -> float:
    """Wait (up to `minutes`) until the rest of the machine uses < `cores` over `window` seconds; returns
    the cores it used in the last window. Run before starting any server: all but this process counts."""
    deadline = time.monotonic() + minutes * 60
    while True:
        others = Others()
        time.sleep(window)
        other = others.cores()
        if other < cores:
            log(f"bench: the machine is quiet: other processes {other:.2f} cores over {window:g} s")
            return other
        if time.monotonic() > deadline:
            log(f"bench: still busy after {minutes:g} minutes (other processes {other:.2f} cores): measuring anyway")
            return other
        log(f"bench: waiting for a quiet machine: other processes {other:.2f} cores")


EVERY_CPU = f"0-{(os.cpu_count() or 1) - 1}"  # for a child of a process pinned to one CPU: it is not


def taskset(cpus: int | str | None) -> list[str]:
    """The command prefix that runs a program on `cpus` (a CPU or a list like "0-1"); none for None."""
    return [] if cpus is None else ["taskset", "--cpu-list", str(cpus)]


def pin_self(who: str, pin: bool = True) -> int | None:
    """This process, and so every load generator it starts, on the first CPU it may use; returns the
    last, for the servers (None, nothing pinned, with one CPU or `pin` false)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        log(f"{who}: servers and load generators share the CPUs")
        return None
    os.sched_setaffinity(0, {cpus[0]})
    log(f"{who}: this script and the load generators on CPU {cpus[0]}, every server on CPU {cpus[-1]} (taskset)")
    return cpus[-1]


def unpin_self() -> None:
    """This process on every CPU again: from a process pinned to one, common.yardstick ran about 35 % slower
    although it gives its child every CPU (2026-12-07: 67-70k against 102-111k samples/s)."""
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def machine_speed() -> dict:
    """Float32 matrix products of a wide hidden layer (256x1280 @ 1280x1280, the BLAS threads as set) in
    GFLOP/s, and an element-wise add over 10 MB arrays (one thread) in GB/s. A few seconds."""
    rng = np.random.default_rng(0)
    x, w = rng.random((256, 1280), np.float32), rng.random((1280, 1280), np.float32)
    a, b = rng.random(2_621_440, np.float32), rng.random(2_621_440, np.float32)
    out_mm, out_add = np.empty((256, 1280), np.float32), np.empty_like(a)
    return {"sgemm_gflops": 2 * x.size * w.shape[1] / _seconds_per_call(lambda: np.matmul(x, w, out=out_mm)) / 1e9,
            "add_gb_per_s": 3 * a.nbytes / _seconds_per_call(lambda: np.add(a, b, out=out_add)) / 1e9}


def _seconds_per_call(function) -> float:
    """The best of 3 timings, each of as many calls as take at least 0.2 s (timeit's autorange)."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=3, number=number)) / number


def describe_speed(*probes: dict) -> str:
    """One line of machine_speed results (e.g. before / after a run) for under a table."""
    def values(key: str, digits: int) -> str:
        return " / ".join(f"{probe[key]:.{digits}f}" for probe in probes)
    return (f"machine speed (machine_speed in bench/common.py{', before / after' if len(probes) > 1 else ''}): "
            f"float32 matmul {values('sgemm_gflops', 0)} GFLOP/s, element-wise add {values('add_gb_per_s', 1)} GB/s")


def yardstick(data: str | None, runs: int = YARDSTICK_RUNS) -> list[dict]:
    """`runs` runs of `bench/run speed`'s PyTorch case (bench/yardstick.py, about 4 s each), in a process
    of its own on every CPU; each run's samples/s and how many cores other processes used meanwhile."""
    if not BENCH_PYTHON.exists():
        raise RuntimeError(f"{BENCH_PYTHON} is missing: bench/run creates it")
    done = subprocess.run([*taskset(EVERY_CPU), str(BENCH_PYTHON), "-m", "bench.yardstick", mnist_path(data),
                           str(runs)], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"the PyTorch yardstick failed:\n{done.stderr[-2000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    for run in results:
        log(f"machine factor: pytorch {run['samples_per_second']:,.0f} samples/s, "
            f"other processes {run['other_cores']:.2f} cores")
    return results


def machine_factor(*measurements: list[dict]) -> dict:
    """Budgets scale by factor = 165,928 / the median PyTorch samples/s of the yardstick runs given
    (e.g. those before and after a run): > 1 on a machine slower than the reference one."""
    runs = [run for measurement in measurements for run in measurement]
    median = statistics.median(run["samples_per_second"] for run in runs)
    return {"factor": REFERENCE_SAMPLES_PER_SECOND / median, "samples_per_second": median,
            "reference_samples_per_second": REFERENCE_SAMPLES_PER_SECOND,
            "measurements": [[run["samples_per_second"] for run in m] for m in measurements],
            "other_cores_max": max(run["other_cores"] for run in runs)}


def describe_factor(factor: dict) -> str:
    """One line for under a table: the factor, what it was measured from, and a warning if it is suspect."""
    runs = sum(len(m) for m in factor["measurements"])
    line = (f"machine factor: {factor['reference_samples_per_second']:,} / "
            f"{factor['samples_per_second']:,.0f} PyTorch samples/s (median of {runs} "
            f"yardstick runs) = **{factor['factor']:.2f}**; budgets are reference-machine seconds x the factor")
    if factor["other_cores_max"] > BUSY:
        line += (f" (warning: other processes used up to {factor['other_cores_max']:.2f} cores during a yardstick "
                 "run, which slows it many times: the factor is inflated, re-run on an idle machine)")
    return line


def tool_version(argv: list[str], containing: str = "") -> str | None:
    """The first line of a program's output (ANSI colours removed) that contains `containing`."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    return next((line.strip() for line in text.splitlines() if containing in line and line.strip()), None)


def environment(*distributions: str, **versions) -> dict:
    """Date, Python, machine, CPUs and NumPy of this run, the versions of the installed `distributions`,
    then the `versions` given."""
    from importlib.metadata import version

    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, **{name: version(name) for name in distributions}, **versions}


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {path}")
