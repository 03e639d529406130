"""Servers for the service benchmarks (bench.py, v2_bench.py): started, checked, measured and stopped.

Every server runs in its own process group (session) and is stopped by group id; its CPU time is
that of the live processes of the group (psutil). `checkout` makes a `git worktree` of another
commit with its own virtual environment, so that its `mnist-serve` can run beside this tree's.
Runs in .venv.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, log, machine_busy_seconds, own_cpu_seconds  # bench/common.py

HERE = Path(__file__).resolve().parent
SERVICE_VENV = REPO / ".venv"
WORKERS = 2
GTHREAD_THREADS = 4  # threads per worker when a benchmark runs mnist-serve's gthread worker


@contextlib.contextmanager
def session():
    """Servers in a work directory: $SERVICE_BENCH_WORKDIR (bench/service/run's, which it removes), else
    a temporary one removed here. SIGTERM and SIGHUP end the run as SystemExit, so that every server
    is stopped on the way out, as on success, failure or Ctrl-C."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    workdir = Path(os.environ.get("SERVICE_BENCH_WORKDIR") or tempfile.mkdtemp(prefix="service-bench-"))
    servers = Servers(workdir)
    try:
        yield servers
    finally:
        servers.stop_all()
        if "SERVICE_BENCH_WORKDIR" not in os.environ:
            shutil.rmtree(workdir, ignore_errors=True)


class Servers:
    """Every server started here: each in its own process group (session), stopped by group id.

    The group ids are also written to $SERVICE_BENCH_PGIDS, so that bench/service/run's trap can stop
    whatever is left if this process dies without running its own cleanup.
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen] = {}
        self.pgid_file = os.environ.get("SERVICE_BENCH_PGIDS")

    def start(self, name: str, argv: list[str], env: dict, cwd: Path | None = None,
              capture: bool = False) -> subprocess.Popen:
        """A process in a new session; its output goes to <name>.log, or to pipes with capture=True."""
        log_path = self.workdir / f"{name}.log"
        if capture:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        else:
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        start_new_session=True)
        proc.log_path = log_path
        self.running[name] = proc
        self._write_pgids()
        return proc

    def _write_pgids(self) -> None:
        if self.pgid_file:
            # list(): a measurement thread may start a process (slowhttptest) while the main thread runs wrk.
            Path(self.pgid_file).write_text("".join(f"{p.pid}\n" for p in list(self.running.values())))

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            if _group_gone(proc, wait):
                break
        proc.wait(timeout=5)
        self._write_pgids()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def _group_gone(proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()
        if not group_processes(proc.pid):
            return True
        time.sleep(0.1)
    return False


def group_processes(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    found = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return found


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    return sum(group_cpu_by_pid(pgid).values())


def group_cpu_by_pid(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of a process group."""
    used = {}
    for process in group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[process.pid] = times.user + times.system
    return used


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of the live processes of a process group (the arbiter and its workers)."""
    total = 0
    for process in group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the gunicorn arbiter `pid`."""
    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.Error:
        return []


class CpuMeter:
    """CPU seconds used between start and `read()`: by a server's process group, by this process's
    waited-for children (wrk, h2load, slowhttptest), by this process, and by everything else on the
    machine (which includes the kernel's softirq time for loopback traffic, charged to no process).
    The server's is counted process by process: a worker that dies meanwhile (gunicorn kills one
    stuck past its TIMEOUT) takes its CPU since the start with it, which then counts as others'."""

    def __init__(self, pgid: int):
        self.pgid = pgid
        self.started = time.monotonic()
        self.server_before = group_cpu_by_pid(pgid)
        self.before = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return children.ru_utime + children.ru_stime, own_cpu_seconds(), machine_busy_seconds()

    def read(self) -> dict:
        server = sum(used - self.server_before.get(pid, 0.0) for pid, used in group_cpu_by_pid(self.pgid).items())
        children, own, busy = (after - before for after, before in zip(self._now(), self.before))
        seconds = time.monotonic() - self.started
        other = max(0.0, busy - server - children - own)
        return {"seconds": seconds, "server_cpu_s": server, "children_cpu_s": children, "own_cpu_s": own,
                "other_cpu_s": other, "other_cpu_cores": other / seconds if seconds else 0.0}


def run_wrk(servers: Servers, url: str, body_path: Path, seconds: float, connections: int, threads: int = 1,
            timeout: float = 10, name: str = "wrk", content_type: str = "application/json",
            headers: tuple[str, ...] = ()) -> dict:
    """wrk POSTing `body_path` (JSON unless `content_type` says otherwise; `headers`, "Name: value", sent
    too) to `url` with post.lua: its counts, errors and latencies, and req/s."""
    env = os.environ | {"BODY_FILE": str(body_path), "CONTENT_TYPE": content_type}
    argv = ["wrk", "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{seconds:g}s", "--timeout", f"{timeout:g}s", "--latency",
            *(arg for header in headers for arg in ("--header", header)),
            "--script", str(HERE / "post.lua"), url]
    # Registered like a server, so that it is stopped too if this process is interrupted.
    proc = servers.start(name, argv, env, capture=True)
    stdout, stderr = proc.communicate()
    servers.running.pop(name, None)
    match = re.search(r"^WRK_JSON (.*)$", stdout, re.MULTILINE)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{stdout}\n{stderr}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["duration_s"]
    return result


def h2load_counts(stdout: str) -> dict[str, int] | None:
    """The request counts of h2load's summary ("requests: N total, N started, ..."); None without one."""
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", stdout)
    if counts is None:
        return None
    fields = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return dict(zip(fields, map(int, counts.groups())))


def wait_idle(pgid: int, seconds: float = 15) -> None:
    """Until the server group uses < 5 % of a core: a load generator stops with requests still queued
    at the server, which must not spill into the next measurement."""
    deadline = time.monotonic() + seconds
    before = group_cpu_seconds(pgid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = group_cpu_seconds(pgid)
        if now - before < 0.01:
            return
        before = now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
         timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(proc: subprocess.Popen, url: str, seconds: float = 90, interval: float = 0.2) -> None:
    """Until `url` answers 200, asking every `interval` seconds; RuntimeError if the server exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log:\n{tail(proc.log_path)}")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"not ready after {seconds:.0f} s: {url}; log:\n{tail(proc.log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- mnist-serve ---------------------------------------------------------------------------------

def start_service(servers: Servers, name: str, model_dir: Path | str, model_name: str, *, venv: Path = SERVICE_VENV,
                  worker_class: str | None = None, gunicorn_args: tuple[str, ...] = (), cpus: int | None = None,
                  ready_interval: float = 0.2, **settings: str) -> tuple[subprocess.Popen, str]:
    """`mnist-serve` of `venv` on a free loopback port with WORKERS workers; returns (process, base URL)
    once /readyz answers 200. The worker class is the service's default unless `worker_class` is given
    (gthread with GTHREAD_THREADS threads); `gunicorn_args` go to gunicorn (`--keep-alive 2`), `cpus`
    pins it to that CPU (taskset), `settings` are more of its environment variables (LOG_LEVEL=...;
    GRPC_PORT=<a free port> serves gRPC too, which is off here unless asked for).
    `model_dir` may be an s3:// URI; `ready_interval` is how often /readyz is asked (start-up timing)."""
    port = free_port()
    env = dict(os.environ)
    # Whatever the caller's environment says, not here. gRPC is off (GRPC_PORT=0, HTTP alone, as before
    # mnist-serve had gRPC) unless `settings` turn it on: figures stay comparable with earlier runs, and
    # no two servers race for the default GRPC_PORT.
    for variable in ("WORKER_CLASS", "THREADS", "GRPC_PORT", "GRPC_WORKERS"):
        env.pop(variable, None)
    env |= {"GRPC_PORT": "0"} | settings | {
        "MODEL_DIR": str(model_dir), "MODEL_NAME": model_name, "HOST": "127.0.0.1", "PORT": str(port),
        "WORKERS": str(WORKERS), "PROMETHEUS_MULTIPROC_DIR": str(servers.workdir / f"metrics-{name}")}
    if worker_class:
        env["WORKER_CLASS"] = worker_class
    if worker_class == "gthread":
        env["THREADS"] = str(GTHREAD_THREADS)
    # Made here too: the trees between d35b212 (the gevent worker) and 02de23f, which `v2 --baseline`
    # may serve, exit when it is missing (the worker class imports the metrics in gunicorn's arbiter).
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    pin = ["taskset", "--cpu-list", str(cpus)] if cpus is not None else []
    proc = servers.start(name, [*pin, str(venv / "bin/mnist-serve"), *gunicorn_args], env, cwd=servers.workdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base + "/readyz", interval=ready_interval)
    return proc, base


def add_run_arguments(parser) -> None:
    """The options bench.py and hostile.py share: the model, the data, waiting for a quiet machine, JSON."""
    parser.add_argument("--model-dir", help="serve this MODEL_DIR (default: train a `fast` model into a temp dir)")
    parser.add_argument("--model-name", default=os.environ.get("MODEL_NAME", "mnist"))
    parser.add_argument("--data", help="MNIST folder (default: $MNIST_DIR, else ../shared/data/mnist)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES",
                        help="first wait up to this long for other processes to use < 0.2 cores over 10 s [0]")
    parser.add_argument("--json", help="also write the results to this file")


def ensure_model(model_dir: str | None, model_name: str, workdir: Path, data_path: str,
                 venv: Path = SERVICE_VENV) -> Path:
    """The model directory: model_dir, else a `fast` model trained now (by `venv`'s mnist-train) into
    the work directory."""
    if model_dir:
        return Path(model_dir).resolve()
    trained = workdir / "models"
    log("bench: training a `fast` model into a temporary MODEL_DIR (--model-dir to use yours) ...")
    subprocess.run([str(venv / "bin/mnist-train"), "train", "--data", data_path, "--model-dir", str(trained),
                    "--name", model_name, "--preset", "fast"], check=True, stdout=subprocess.DEVNULL)
    return trained


# --- other commits -------------------------------------------------------------------------------

class Checkout:
    """A `git worktree` of `ref` at <workdir>/<label>-tree and a virtual environment <workdir>/<label>-venv
    with that tree's own distributions (each */pyproject.toml: trainer/ and service/, and artifact/
    where it exists), installed with that tree's constraints.txt by scripts/venv.sh's ensure_venv.
    `create()` makes both; `remove()` removes them, also after a `create()` that failed half-way."""

    def __init__(self, ref: str, workdir: Path, label: str):
        self.ref, self.label = ref, label
        self.tree, self.venv = workdir / f"{label}-tree", workdir / f"{label}-venv"
        self.commit = None

    def create(self) -> Checkout:
        self.commit = git("rev-parse", "--short", f"{self.ref}^{{commit}}")
        log(f"bench: {self.label} = {self.ref} ({self.commit}), a git worktree with its own venv ...")
        git("worktree", "add", "--detach", "--quiet", str(self.tree), self.commit)
        packages = [f"./{p.parent.name}" for p in sorted(self.tree.glob("*/pyproject.toml"))]
        subprocess.run(["bash", "-c", 'source "$0" && ensure_venv "$@"', str(REPO / "scripts/venv.sh"),
                        str(self.venv), *packages], cwd=self.tree, check=True)
        return self

    def remove(self) -> None:
        if self.tree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.tree)], check=False)
        shutil.rmtree(self.venv, ignore_errors=True)


def git(*argv: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()
