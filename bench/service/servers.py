"""What the service benchmarks share: servers started, checked, measured and stopped in process groups;
one-shot HTTP calls, /metrics, wrk and h2load and their parsers, round summaries and the main()
scaffold (bench/README.md, "Service"). Runs in .venv.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import median

import psutil

from bench import common
from bench.common import REPO, log, taskset, tool_version

HERE = Path(__file__).resolve().parent
SERVICE_VENV = REPO / ".venv"
MLSERVER_VENV = REPO / ".bench-mlserver-venv"
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
    """Every process started here, each in its own session, stopped by process group. The group ids are
    also written to $SERVICE_BENCH_PGIDS, for bench/service/run's trap if this process dies first."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen] = {}
        self.pgid_file = os.environ.get("SERVICE_BENCH_PGIDS")

    def start(self, name: str, argv: list[str], env: dict, cwd: Path | None = None,
              capture: bool = False) -> subprocess.Popen:
        """A process in a new session; its output goes to <name>.log, or to pipes with capture=True."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as out:
            output = subprocess.PIPE if capture else out
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                    text=capture or None, start_new_session=True)
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
            deadline = time.monotonic() + wait
            while proc.poll() is None or group_processes(proc.pid):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                break
        proc.wait(timeout=5)
        self._write_pgids()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def run(self, name: str, argv: list[str], env: dict | None = None, timeout: float | None = None):
        """A load generator run to its end, registered like a server (stopped too if this process is
        interrupted), SIGTERMed after `timeout` s: (stdout, stderr, returncode, stopped at the deadline)."""
        proc = self.start(name, argv, env or dict(os.environ), capture=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            stopped = False
        except subprocess.TimeoutExpired:
            self.stop(name)
            stdout, stderr = proc.communicate()
            stopped = True
        self.running.pop(name, None)
        self._write_pgids()
        return stdout, stderr, proc.returncode, stopped


def group_processes(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    found = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError, psutil.Error):  # gone meanwhile
            if os.getpgid(pid) == pgid and (process := psutil.Process(pid)).status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def group_each(pgid: int, read) -> dict[int, object]:
    """read(process) of each live process of a process group that is still there to be read, by pid."""
    values = {}
    for process in group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            values[process.pid] = read(process)
    return values


def group_cpu_by_pid(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of a process group."""
    return group_each(pgid, lambda p: sum(p.cpu_times()[:2]))


def group_cpu_seconds(pgid: int) -> float:
    return sum(group_cpu_by_pid(pgid).values())


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of the live processes of a process group (the arbiter and its workers)."""
    return sum(group_each(pgid, lambda p: p.memory_info().rss).values())


def group_running(pgid: int, text: str) -> list[int]:
    """The live processes of group `pgid` whose command line contains `text`."""
    return [pid for pid, line in group_each(pgid, lambda p: " ".join(p.cmdline())).items() if text in line]


class CpuMeter:
    """CPU seconds used between start and `read()` by a server's process group (process by process: a
    worker that dies meanwhile takes its CPU with it, to others'), by this process's waited-for children
    (load generators), by this process, and by everything else (the kernel's loopback softirq included)."""

    def __init__(self, pgid: int):
        self.pgid, self.started = pgid, time.monotonic()
        self.server_before, self.before = group_cpu_by_pid(pgid), self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return children.ru_utime + children.ru_stime, common.own_cpu_seconds(), common.machine_busy_seconds()

    def read(self) -> dict:
        server = sum(used - self.server_before.get(pid, 0.0) for pid, used in group_cpu_by_pid(self.pgid).items())
        children, own, busy = (after - before for after, before in zip(self._now(), self.before))
        seconds = time.monotonic() - self.started
        other = max(0.0, busy - server - children - own)
        return {"seconds": seconds, "server_cpu_s": server, "generator_cpu_s": children, "own_cpu_s": own,
                "other_cpu_s": other, "other_cpu_cores": other / seconds if seconds else 0.0}


def wait_idle(pgid: int, seconds: float = 15) -> None:
    """Until the server group uses < 5 % of a core: requests queued when a load stops must not spill over."""
    deadline, before = time.monotonic() + seconds, group_cpu_seconds(pgid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := group_cpu_seconds(pgid)) - before < 0.01:
            return
        before = now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, dict, bytes]:
    """One request on its own connection: (status, headers, body); JSON unless `headers` say otherwise."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scrape(base: str) -> list:
    """The samples of the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    status, _, raw = http("GET", base + "/metrics", timeout=5)
    if status != 200:
        raise RuntimeError(f"{base}/metrics: HTTP {status}")
    return [sample for family in text_string_to_metric_families(raw.decode()) for sample in family.samples]


def totals(samples, name: str, by: str | None = None, **match: str) -> dict[str, float]:
    """The values of the samples called `name` whose labels match, summed by the label `by` (else under "")."""
    summed: dict[str, float] = collections.Counter()
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
            summed[s.labels.get(by, "") if by else ""] += s.value
    return dict(summed)


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """after - before, key by key, the keys that changed."""
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(after) | set(before))
            if after.get(k, 0.0) != before.get(k, 0.0)}


def wait_ready(proc: subprocess.Popen, url: str, seconds: float = 90, interval: float = 0.2,
               method: str = "GET", body: bytes | None = None) -> None:
    """Until `url` answers 200, asking every `interval` seconds; RuntimeError if the server exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log:\n{tail(proc.log_path)}")
        with contextlib.suppress(OSError):
            if http(method, url, body, timeout=2)[0] == 200:
                return
        time.sleep(interval)
    raise RuntimeError(f"not ready after {seconds:.0f} s: {url}; log:\n{tail(proc.log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_wrk(servers: Servers, url: str, body_path: Path, seconds: float, connections: int, threads: int = 1,
            timeout: float = 10, name: str = "wrk", content_type: str = "application/json",
            headers: tuple[str, ...] = (), cpus: str | None = None) -> dict:
    """wrk POSTing `body_path` to `url` with post.lua (`headers`, "Name: value", sent too), on `cpus` if
    given: its counts, errors by kind and latencies (wrk's own percentiles), and req/s."""
    env = os.environ | {"BODY_FILE": str(body_path), "CONTENT_TYPE": content_type}
    argv = [*taskset(cpus), "wrk", "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{seconds:g}s", "--timeout", f"{timeout:g}s", "--latency",
            *(arg for header in headers for arg in ("--header", header)), "--script", str(HERE / "post.lua"), url]
    stdout, stderr, returncode, _ = servers.run(name, argv, env)
    match = re.search(r"^WRK_JSON (.*)$", stdout, re.MULTILINE)
    if returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({returncode}):\n{stdout}\n{stderr}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["duration_s"]
    return result


def measure_wrk(servers: Servers, pgid: int, url: str, body: Path, seconds: float, connections: int,
                **wrk_args) -> dict:
    """One wrk slice against the server of group `pgid` once it is idle, with the CPU used meanwhile."""
    wait_idle(pgid)
    meter = CpuMeter(pgid)
    result = run_wrk(servers, url, body, seconds, connections, **wrk_args) | meter.read()
    return result | {"server_cpu_ms_per_request": result["server_cpu_s"] * 1000 / max(1, result["requests"]),
                     "error_count": sum(result["errors"].values())}


def run_h2load(servers: Servers, name: str, argv: list[str], url: str, timeout: float, cpus: str | None = None) -> dict:
    """h2load ARGV URL with a per-request log, on `cpus` if given, stopped after `timeout` s: the request
    counts, DATA bytes and duration of its summary (None where it printed none), the log's rows (start µs,
    status, µs)."""
    requests_log = servers.workdir / f"{name}.tsv"
    requests_log.unlink(missing_ok=True)  # h2load appends
    stdout, stderr, returncode, stopped = servers.run(
        name, [*taskset(cpus), "h2load", *argv, "--log-file", str(requests_log), url], timeout=timeout)
    if returncode and not stopped:
        raise RuntimeError(f"h2load failed ({returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", stdout)
    traffic = re.search(r"traffic: .*\((\d+)\) total, .*\((\d+)\) headers .*, .*\((\d+)\) data", stdout)
    finished = re.search(r"finished in ([\d.]+)(m?s)", stdout)
    rows = []
    with contextlib.suppress(OSError):
        rows = [tuple(map(int, line.split("\t")[:3])) for line in requests_log.read_text().splitlines()
                if line.count("\t") >= 2]
    requests_log.unlink(missing_ok=True)
    fields = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return {"counts": dict(zip(fields, map(int, counts.groups()))) if counts else None,
            "data_bytes": int(traffic.group(3)) if traffic else None,
            "duration_s": float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1) if finished else None,
            "rows": rows, "stopped": stopped, "output": stdout[-2000:] + stderr[-2000:]}


def interleave(who: str, cases: dict, rounds: int, warmup: float, warm, measure) -> dict[str, list[dict]]:
    """warm(case, warmup) for every case, then `rounds` rounds of one measure(case) slice of every case, the
    order reversed every other round: a slow moment of the shared machine hits every case, not one."""
    if warmup > 0:
        log(f"{who}: warm-up, {warmup:g} s per case")
        for case in cases.values():
            warm(case, warmup)
    slices = {key: [] for key in cases}
    for r in range(rounds):
        for key in list(cases)[:: -1 if r % 2 else 1]:
            slices[key].append(s := measure(cases[key]))
            log_round(who, f"round {r + 1}/{rounds} {key}" + ("" if s.get("checks_ok", True) else " CHECK FAILED"), s)
    return slices


def summarize_rounds(slices: list[dict], images: int = 1) -> dict:
    """Rounds of one load as one result: req/s, p50 and p99 are medians of the rounds (robust to one
    slow moment), with the range of req/s and the worst round's p99; CPU and errors (by kind) from the totals."""
    requests, seconds = sum(s["requests"] for s in slices), sum(s["duration_s"] for s in slices)
    errors = sum((collections.Counter(s["errors"]) for s in slices), collections.Counter())
    rps, cpu = [s["rps"] for s in slices], {k: sum(s[k] for s in slices) for k in ("server_cpu_s", "generator_cpu_s",
                                                                                    "other_cpu_s")}
    return {"requests": requests, "duration_s": seconds, "rps": median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "images_per_request": images, "images_per_s": median(rps) * images,
            "p50_ms": median(s["latency_ms"]["p50"] for s in slices),
            "p99_ms": median(s["latency_ms"]["p99"] for s in slices),
            "p99_ms_worst_round": max(s["latency_ms"]["p99"] for s in slices),
            "server_cpu_ms_per_request": cpu["server_cpu_s"] * 1000 / max(1, requests),
            "server_cores": cpu["server_cpu_s"] / seconds, "generator_cores": cpu["generator_cpu_s"] / seconds,
            "other_cores": cpu["other_cpu_s"] / seconds,
            "other_cores_max": max(s["other_cpu_s"] / s["duration_s"] for s in slices), "errors": dict(errors),
            "error_count": sum(errors.values()), "rounds": slices}


# The columns of a table of summarize_rounds() results, each with its "server" and "request".
ROUND_COLUMNS = [("server", "{server}"), ("request", "{request}"),
                 ("req/s (range of rounds)", "{rps:,.0f} ({rps_min:,.0f}-{rps_max:,.0f})"),
                 ("images/s", "{images_per_s:,.0f}"), ("p50 ms", "{p50_ms:.2f}"), ("p99 ms", "{p99_ms:.2f}"),
                 ("worst p99 ms", "{p99_ms_worst_round:.2f}"), ("server CPU ms/req", "{server_cpu_ms_per_request:.3f}"),
                 ("others' cores", "{other_cores:.2f}")]


def log_round(who: str, what: str, result: dict) -> None:
    """A slice's log line: req/s, p99, and how busy the rest of the machine was."""
    other = result["other_cpu_cores"]
    log(f"{who}: {what}: {result['rps']:,.0f} req/s, p99 {result['latency_ms']['p99'] or 0:.2f} ms, other "
        f"processes {other:.2f} cores" + (" (busy machine: suspect)" if other > common.BUSY else ""))


def start_service(servers: Servers, name: str, model_dir: Path | str, model_name: str, *,
                  worker_class: str | None = None, gunicorn_args: tuple[str, ...] = (), cpus: int | None = None,
                  ready_interval: float = 0.2, **settings: str) -> tuple[subprocess.Popen, str]:
    """`mnist-serve` on a free loopback port with WORKERS workers, on `cpus` (taskset) if given;
    returns (process, base URL) once /readyz answers 200. `settings` are more environment variables;
    gRPC is off (GRPC_PORT=0, as before mnist-serve had gRPC) unless they set GRPC_PORT."""
    port = free_port()
    while str(port) == settings.get("GRPC_PORT"):  # the kernel may hand the caller's free port out again
        port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_CLASS", "THREADS", "GRPC_PORT", "GRPC_WORKERS")}
    env |= {"GRPC_PORT": "0", "WORKERS": str(WORKERS)} | settings | {
        "MODEL_DIR": str(model_dir), "MODEL_NAME": model_name, "HOST": "127.0.0.1", "PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(servers.workdir / f"metrics-{name}")}
    if worker_class:
        env["WORKER_CLASS"] = worker_class
    if worker_class == "gthread":
        env["THREADS"] = str(GTHREAD_THREADS)
    proc = servers.start(name, [*taskset(cpus), str(SERVICE_VENV / "bin/mnist-serve"), *gunicorn_args], env,
                         cwd=servers.workdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base + "/readyz", interval=ready_interval)
    return proc, base


def start_bare(servers: Servers, version_dir: Path, name: str = "bare", workers: int = WORKERS,
               cpus: int | None = None) -> tuple[subprocess.Popen, str]:
    """bare_app.py under gunicorn at its best for this load: `workers` workers of gunicorn's own gevent class,
    keep-alive 5 s (mnist-serve's default), one BLAS thread each, on `cpus` if given; returns its /v1/predict
    URL."""
    port = free_port()
    env = {"OPENBLAS_NUM_THREADS": "1"} | os.environ | {"BARE_MODEL_PATH": str(version_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [*taskset(cpus), str(SERVICE_VENV / "bin/python"), "-m", "gunicorn", "--chdir", str(HERE), "--workers",
            str(workers), "--worker-class", "gevent", "--keep-alive", "5", "--bind", f"127.0.0.1:{port}",
            "--worker-tmp-dir", "/dev/shm", "--no-control-socket", "bare_app:app"]
    proc = servers.start(name, argv, env)
    url = f"http://127.0.0.1:{port}/v1/predict"
    # No health route: ready when it answers a prediction.
    wait_ready(proc, url, 60, method="POST", body=b'{"instances": [[' + b",".join([b"0"] * 784) + b"]]}")
    return proc, url


def start_mlserver(servers: Servers, version_dir: Path, model_name: str, cpus: int | None = None,
                   parallel_workers: int | None = WORKERS, name: str = "mlserver") -> tuple[subprocess.Popen, dict]:
    """MLServer with mlserver_runtime.py, production-like (no access log, its default metrics), with
    `parallel_workers` inference processes (0: inference in the server process; None: MLServer's default),
    on `cpus` if given; returns its settings (ports) once the model is ready."""
    root = servers.workdir / name
    (root / model_name).mkdir(parents=True)
    settings = {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port(),
                "metrics_port": free_port(), "debug": False,
                "metrics_dir": str(root / ".metrics"), "environments_dir": str(root / ".envs")}
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {"name": model_name, "implementation": "mlserver_runtime.MnistRuntime",
                      "parameters": {"uri": str(version_dir), "version": version_dir.name}}
    (root / model_name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = os.environ | {"PYTHONPATH": str(HERE)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = servers.start(name, [*taskset(cpus), str(MLSERVER_VENV / "bin/mlserver"), "start", str(root)], env,
                         cwd=root)
    settings["infer_url"] = f"http://127.0.0.1:{settings['http_port']}/v2/models/{model_name}/infer"
    wait_ready(proc, settings["infer_url"].removesuffix("/infer") + "/ready")
    return proc, settings


def start_noop_http(servers: Servers, cpus: int | None = None) -> tuple[subprocess.Popen, str]:
    """noop.py's WSGI constant under gunicorn with mnist-serve's configuration and worker (its defaults, one
    worker), on `cpus` if given: the ceiling of mnist-serve's HTTP transport. Returns its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_CLASS", "KEEPALIVE", "PROMETHEUS_MULTIPROC_DIR")}
    env |= {"WORKERS": "1", "HOST": "127.0.0.1", "PORT": str(port)}
    proc = servers.start("noop-http", [*taskset(cpus), str(SERVICE_VENV / "bin/gunicorn"), "-c",
                                       "python:mnist_service.process.gunicorn_config", "bench.service.noop:app"],
                         env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/v1/predict"
    wait_ready(proc, url, 30, method="POST", body=b"{}")
    return proc, url


def start_noop_grpc(servers: Servers, cpus: int | None = None) -> tuple[subprocess.Popen, int]:
    """noop.py's grpc.aio server answering a fixed ModelInferResponse, on `cpus` if given: the ceiling of
    mnist-serve's gRPC transport. Returns its port (the caller waits for it to serve)."""
    port = free_port()
    proc = servers.start("noop-grpc", [*taskset(cpus), str(SERVICE_VENV / "bin/python"), "-m", "bench.service.noop",
                                       str(port)], dict(os.environ), cwd=REPO)
    return proc, port


def mlserver_version() -> str | None:
    return tool_version([str(MLSERVER_VENV / "bin/python"), "-c", "import mlserver; print(mlserver.__version__)"])


def ensure_model(model_dir: str | None, model_name: str, workdir: Path, data_path: str) -> Path:
    """model_dir, else a `fast` model trained now (by .venv's mnist-train) into the work directory."""
    if model_dir:
        return Path(model_dir).resolve()
    trained = workdir / "models"
    log("bench: training a `fast` model into a temporary MODEL_DIR (--model-dir to use yours) ...")
    subprocess.run([str(SERVICE_VENV / "bin/mnist-train"), "train", "--data", data_path, "--model-dir", str(trained),
                    "--name", model_name, "--preset", "fast"], check=True, stdout=subprocess.DEVNULL)
    return trained


def single_body(test, workdir: Path) -> Path:
    """The single-instance /v1/predict body (the first test digit), compact JSON."""
    path = workdir / "body-single.json"
    path.write_text(json.dumps({"instances": [test.images[0].reshape(784).tolist()]}, separators=(",", ":")))
    return path


def git(*argv: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


def parser(prog: str, doc: str, model: bool = True) -> argparse.ArgumentParser:
    """The options every service benchmark takes: the data, waiting for a quiet machine, JSON; with
    `model`, the model too."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model:
        p.add_argument("--model-dir", help="serve this MODEL_DIR (default: train a `fast` model into a temp dir)")
    p.add_argument("--model-name", default=os.environ.get("MODEL_NAME", "mnist"))
    p.add_argument("--data", help="MNIST folder (default: $MNIST_DIR, else ../shared/data/mnist)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES",
                   help="first wait up to this long for other processes to use < 0.2 cores over 10 s [0]")
    p.add_argument("--json", help="also write the results to this file")
    return p


def add_round_options(p: argparse.ArgumentParser, rounds: int, warmup: int) -> None:
    """--seconds, --rounds, --warmup (interleaved slices of load) and --factor-runs (the machine factor)."""
    p.add_argument("--seconds", type=int, default=5, help="seconds of load per case and round [5]")
    p.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds of every case [{rounds}]")
    p.add_argument("--warmup", type=int, default=warmup, help=f"seconds of unrecorded load per case first [{warmup}]")
    p.add_argument("--factor-runs", type=int, default=3,
                   help="runs of the PyTorch speed case before and again after the servers; 0: none [3]")


def check_rounds(p: argparse.ArgumentParser, args) -> None:
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 0 or args.factor_runs < 0:
        p.error("--rounds and --seconds must be >= 1, --warmup and --factor-runs >= 0")


def subset(p: argparse.ArgumentParser, text: str, known, what: str = "case(s)") -> list[str]:
    """The comma-separated names of `text`, each one of `known`: else a usage error."""
    names = [name for name in text.split(",") if name]
    if unknown := set(names) - set(known):
        p.error(f"unknown {what} {sorted(unknown)}; known: {', '.join(known)}")
    return names


def main(who: str, args, run, report, errors: tuple = (), distributions: tuple[str, ...] = (), **versions) -> int:
    """The scaffold of every service benchmark: wait for a quiet machine if asked, run(args, servers,
    test, model_dir) in a session of servers (stopped on the way out), print report(args, results) (a
    heading line and the tables), write the JSON. 1 when the run failed."""
    from mnist_artifact import ArtifactError

    if args.wait_quiet > 0:
        common.wait_quiet(args.wait_quiet)
    with session() as servers:
        try:
            data_path = common.mnist_path(args.data)
            test = common.load_mnist(data_path).test
            model_dir = (ensure_model(args.model_dir, args.model_name, servers.workdir, data_path)
                         if hasattr(args, "model_dir") else None)
            results = run(args, servers, test, model_dir)
        except (RuntimeError, OSError, subprocess.CalledProcessError, ArtifactError, *errors) as e:
            log(f"{who}: failed: {e}")
            return 1
    env = common.environment(*distributions, **versions)
    heading, text = report(args, results, env)
    print(f"\n{heading}; {env['date']}, Python {env['python']}, {env['cpus']} CPUs\n")
    print(text)
    common.write_json(args.json, {"environment": env, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                           **results})
    return 0
