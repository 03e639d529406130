"""Slow clients, idle connections, a busy machine, crowds and overload against mnist-serve's worker
classes, the server on one core and the load generators on the other: `bench/service/run hostile
[--worker-classes gevent,sync,gthread] [--cases ...]` (bench/README.md, "Slow clients and overload").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import BUSY, latency_ms, log, markdown_table, pin_self, taskset, tool_version
from bench.service import servers as sv
from bench.service.servers import GTHREAD_THREADS, WORKERS, CpuMeter, Servers, run_wrk
from mnist_service.settings import Settings

CLASSES = ("gevent", "sync", "gthread")
CASES = ("max", "slow-headers", "slow-body", "slow-silent", "idle", "busy", "crowd", "overload")
SLOW_CASES = ("slow-headers", "slow-body", "slow-silent")
DEFAULTS = Settings()  # the service's defaults, which every server here runs with
CLIENT_TIMEOUT = DEFAULTS.client_timeout
CLOSE_MARGIN = 3.0  # idle connections must all be closed within CLIENT_TIMEOUT + this
NORMAL_CONNECTIONS, NORMAL_TIMEOUT = 4, 2.0  # the normal traffic beside slow or idle connections
MAX_CONNECTIONS = 16  # the unloaded maximum, as bench/service/run measures it
REQUEST_TIMEOUT = 2  # h2load -T: seconds a request (= a connection) may take under overload
H2LOAD_GRACE = 3  # h2load is stopped this long after its last request's timeout (run_h2load)
POLL_PERIOD = 0.5
CALIBRATION = 0.9  # h2load at this fraction of wrk's maximum: the open-loop check of that maximum
CROWDS = (256, 1000, 8000)
MiB = 1 << 20

# Targets for the default worker (gevent).
TARGET_SLOW_P99_MS = 1000
TARGET_CROWD_VS_MAX = 0.80
TARGET_CROWD_SOCKET_ERRORS = {256: 0.001, 1000: 0.001, 8000: 0.01}  # share of requests, by crowd
TARGET_OVERLOAD_VS_MAX = {2: 0.75, 3: 0.50}  # by factor; at any other, only: every request answered
TARGET_HEALTH_S = 0.5
TARGET_RSS_GROWTH = 1.10


# --- what the server says -----------------------------------------------------------------------

def get(url: str, timeout: float, body: bytes | None = None) -> tuple[int | str, float, dict]:
    """(HTTP status or the error's name, seconds, headers) of one request on its own connection."""
    started = time.monotonic()
    try:
        status, headers, _ = sv.http("POST" if body else "GET", url, body, timeout=timeout)
    except OSError as e:
        status, headers = type(getattr(e, "reason", e)).__name__, {}
    return status, time.monotonic() - started, headers


def counters(base: str) -> dict[str, float] | None:
    """The service's client-timeout and shed counters (summed over labels); None if /metrics did not answer."""
    try:
        samples = sv.scrape(base)
    except (OSError, RuntimeError):
        return None
    return {key: sum(sv.totals(samples, name).values()) for key, name in
            (("client_timeouts", "mnist_client_timeouts_total"), ("shed", "mnist_http_requests_shed_total"))}


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the gunicorn arbiter `pid`."""
    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.Error:
        return []


def recover(base: str, pgid: int, seconds: float = 60) -> float | None:
    """Seconds until /healthz answers 200 again and the server is idle; None if it did not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if get(base + "/healthz", timeout=2)[0] == 200:
            sv.wait_idle(pgid)
            return time.monotonic() - started
        time.sleep(0.5)
    return None


class Snapshot:
    """What a case compares before and after: worker pids, RSS, the service's counters, CPU."""

    def __init__(self, proc: subprocess.Popen, base: str):
        self.proc, self.base = proc, base
        self.pids, self.rss, self.counters = worker_pids(proc.pid), sv.group_rss_bytes(proc.pid), counters(base)
        self.meter = CpuMeter(proc.pid)

    def compare(self, recovered: float | None) -> dict:
        """Call once the server has recovered (its counters are read then)."""
        cpu = self.meter.read()
        pids, after = worker_pids(self.proc.pid), counters(self.base)
        deltas = {k: after[k] - self.counters[k] for k in after} if after and self.counters else None
        return {"workers_before": self.pids, "workers_after": pids, "workers_replaced": pids != self.pids,
                "rss_before_mib": self.rss / MiB, "rss_after_mib": sv.group_rss_bytes(self.proc.pid) / MiB,
                "counters": deltas, "recovered_s": recovered, "cpu": cpu}


# --- clients that do not behave -------------------------------------------------------------------

class Silent(threading.Thread):
    """`count` connections that send nothing; records when the server closes each (seconds after all
    were opened) and the first line of anything it sends before closing."""

    def __init__(self, port: int, count: int):
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stopping, self.ready = threading.Event(), threading.Event()
        self.failed, self.opened, self.open_s, self.closed_at = 0, 0, 0.0, []
        self.answers: collections.Counter = collections.Counter()
        self.started = time.monotonic()

    def run(self) -> None:
        selector, sockets = selectors.DefaultSelector(), set()
        try:
            for _ in range(self.count):
                sock = socket.socket()
                sock.settimeout(3)
                try:
                    sock.connect(("127.0.0.1", self.port))
                except OSError:
                    self.failed += 1
                    sock.close()
                    continue
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                sockets.add(sock)
            self.opened, self.open_s = len(sockets), time.monotonic() - self.started
            self.started = time.monotonic()
            self.ready.set()
            while sockets and not self.stopping.is_set():
                for key, _ in selector.select(0.1):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:  # reset
                        data = b""
                    if data:
                        self.answers[data.split(b"\r\n", 1)[0].decode(errors="replace")[:40]] += 1
                        continue
                    self.closed_at.append(time.monotonic() - self.started)
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    sockets.discard(key.fileobj)
        finally:
            self.ready.set()
            for sock in sockets:
                sock.close()

    def stop(self) -> dict:
        self.stopping.set()
        self.join()
        closed = sorted(self.closed_at)
        return {"opened": self.opened, "failed": self.failed, "open_s": self.open_s, "closed_by_server": len(closed),
                "first_closed_s": closed[0] if closed else None,
                "all_closed_s": closed[-1] if closed and len(closed) == self.opened else None,
                "answers": dict(self.answers)}


class SilentWaves(threading.Thread):
    """Silent connections in waves until stopped: a new wave whenever the server has closed every
    connection of the last one (as SlowHttpTest does with slowhttptest)."""

    def __init__(self, port: int, count: int):
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stopping = threading.Event()
        self.waves: list[dict] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            wave, wave_started = Silent(self.port, self.count), time.monotonic() - started
            wave.start()
            wave.ready.wait()
            while len(wave.closed_at) < wave.opened and not self.stopping.wait(0.1):
                pass
            held = wave.stop()
            self.waves.append({"started_s": wave_started, "max_connected": held["opened"]} | held)
            if not held["opened"]:
                break

    def stop(self) -> list[dict]:
        self.stopping.set()
        self.join()
        return self.waves


class SlowHttpTest(threading.Thread):
    """slowhttptest in waves against `url` until stopped: a new wave whenever the server has closed
    every connection of the last one. Each wave's CSV (-g -o) and exit status are kept."""

    def __init__(self, servers: Servers, name: str, mode: list[str], url: str, connections: int, seconds: float):
        super().__init__(daemon=True)
        self.servers, self.name, self.mode, self.url = servers, name, mode, url
        self.connections, self.seconds = connections, seconds
        self.stopping = threading.Event()
        self.waves: list[dict] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set() and (left := self.seconds - (time.monotonic() - started)) >= 2:
            name = f"{self.name}-{len(self.waves)}"
            out = self.servers.workdir / name
            argv = ["slowhttptest", *self.mode, "-c", str(self.connections), "-r", str(self.connections),
                    "-i", "1", "-x", "2", "-p", "2", "-l", str(math.ceil(left)), "-g", "-o", str(out), "-u", self.url]
            proc = self.servers.start(name, argv, os.environ)
            wave_started = time.monotonic()
            while proc.poll() is None and not self.stopping.is_set():
                time.sleep(0.05)
            lasted = time.monotonic() - wave_started
            self.servers.stop(name)  # only still running when stopped before its end
            status = re.search(r"Exit status:\s*(?:\x1b\[[0-9;]*m)*([^\x1b\n]*)", _read(proc.log_path))
            rows = _csv(out.with_suffix(".csv"))
            self.waves.append({
                "started_s": wave_started - started, "lasted_s": lasted,
                "exit_status": status.group(1).strip() if status else "stopped at the end of the measurement",
                "max_connected": max((r["Connected"] for r in rows), default=0),
                "first_closed_s": next((r["Seconds"] for r in rows if r["Closed"] > 0), None),
                # slowhttptest ends a wave once the server has closed all its connections
                "all_closed_s": lasted if status and "No open connections" in status.group(1) else None})

    def stop(self) -> list[dict]:
        """After the measurement: the last wave ends by its own -l (so its CSV is written) soon after."""
        self.join(timeout=10)
        self.stopping.set()
        self.join()
        return self.waves


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _csv(path: Path) -> list[dict]:
    """slowhttptest's CSV: Seconds, Closed, Pending, Connected, Service Available (one row a second)."""
    lines = _read(path).splitlines()
    if not lines:
        return []
    header = lines[0].split(",")
    return [dict(zip(header, map(int, line.split(",")))) for line in lines[1:] if line.count(",") == len(header) - 1]


class Poller(threading.Thread):
    """GET (or POST `body` to) `url` every POLL_PERIOD seconds, each with `timeout`; keeps every answer."""

    def __init__(self, url: str, timeout: float, body: bytes | None = None):
        super().__init__(daemon=True)
        self.url, self.timeout, self.body = url, timeout, body
        self.stopping = threading.Event()
        self.answers: list[tuple[int | str, float, dict]] = []

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            self.answers.append(get(self.url, self.timeout, self.body))
            due += POLL_PERIOD
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> list[tuple[int | str, float, dict]]:
        self.stopping.set()
        self.join()
        return self.answers


class RssPeak(threading.Thread):
    """The highest RSS of a process group, sampled every second until stopped."""

    def __init__(self, pgid: int):
        super().__init__(daemon=True)
        self.pgid, self.peak, self.stopping = pgid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0 if self.peak else 0.0):
            self.peak = max(self.peak, sv.group_rss_bytes(self.pgid))

    def stop(self) -> float:
        self.stopping.set()
        self.join()
        return self.peak / MiB


# --- h2load -----------------------------------------------------------------------------------------

def run_h2load(servers: Servers, url: str, body: Path, rate: int, seconds: float, period_ms: int, name: str) -> dict:
    """h2load over HTTP/1.1: `rate` connections a second, one request each, for `seconds`, each with a
    REQUEST_TIMEOUT s timeout; counts and latencies from its per-request log. -T does not bound a
    connect() whose SYNs a full accept queue drops, so h2load is stopped H2LOAD_GRACE s after the last
    request's timeout: what has no answer by then (timed out, refused, never sent) is `no_answer`."""
    per_period = max(1, round(rate * period_ms / 1000))
    total = round(per_period * seconds * 1000 / period_ms)
    done = sv.run_h2load(servers, name, ["--h1", "-r", str(per_period), "--rate-period", f"{period_ms}ms", "-c",
                                         str(total), "-n", str(total), "-T", str(REQUEST_TIMEOUT), "-d", str(body),
                                         "-H", "content-type: application/json"], url,
                         timeout=seconds + REQUEST_TIMEOUT + H2LOAD_GRACE)
    rows, limit_us = done["rows"], REQUEST_TIMEOUT * 1_000_000
    statuses = collections.Counter(status for _, status, _ in rows)
    answered = [us / 1000 for _, status, us in rows if status > 0]
    # A 2xx counts as a prediction when it came within the request timeout (-T does not cover connect()).
    ok = [(start, us) for start, status, us in rows if 200 <= status < 300 and us <= limit_us]
    first = min((start for start, _, _ in rows), default=0)
    per_second = collections.Counter((start - first) // 1_000_000 for start, _ in ok)
    full_seconds = [per_second.get(s, 0) for s in range(int(seconds))]
    return {"offered_rps": per_period * 1000 / period_ms, "requests": total, "stopped_at_deadline": done["stopped"],
            "h2load_summary": done["counts"], "status_counts": {str(k): v for k, v in sorted(statuses.items())},
            "ok": len(ok), "late_2xx": sum(v for k, v in statuses.items() if 200 <= k < 300) - len(ok),
            "shed_503": statuses.get(503, 0), "no_answer": total - len(answered),
            "answered_ms": latency_ms(answered), "ok_ms": latency_ms([us / 1000 for _, us in ok]),
            "ok_rps": len(ok) / seconds,  # predictions per second of the offered window: every request is sent in it
            "ok_per_second_min": min(full_seconds, default=0),
            "ok_per_second_median": statistics.median(full_seconds or [0])}


# --- the cases --------------------------------------------------------------------------------------

class Target:
    """One mnist-serve under test, and what every case needs to load it."""

    def __init__(self, servers: Servers, label: str, proc: subprocess.Popen, base: str, body: Path, args):
        self.servers, self.label, self.proc, self.base, self.body, self.args = servers, label, proc, base, body, args
        self.url, self.port = base + "/v1/predict", int(base.rsplit(":", 1)[1])

    def normal_traffic(self, seconds: float) -> dict:
        """wrk's figures, and a probe's: wrk counts no request that never gets an answer (it counts a
        timeout only when a late answer comes), so one POST every POLL_PERIOD s on its own connection,
        with a NORMAL_TIMEOUT s timeout, counts those."""
        probe = Poller(self.url, NORMAL_TIMEOUT, self.body.read_bytes())
        probe.start()
        r = run_wrk(self.servers, self.url, self.body, seconds, NORMAL_CONNECTIONS, timeout=NORMAL_TIMEOUT,
                    name="wrk-normal")
        answers = probe.stop()
        return {"rps": r["rps"], "requests": r["requests"], "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"] if r["requests"] else None, "max_ms": r["latency_ms"]["max"],
                "errors": r["errors"], "error_count": sum(r["errors"].values()),
                "probes": len(answers), "probes_ok": sum(1 for status, _, _ in answers if status == 200),
                "probe_failures": dict(collections.Counter(str(st) for st, _, _ in answers if st != 200))}

    def finish(self, before: Snapshot) -> dict:
        return before.compare(recover(self.base, self.proc.pid))


def case_max(t: Target) -> dict:
    before = Snapshot(t.proc, t.base)
    r = sv.measure_wrk(t.servers, t.proc.pid, t.url, t.body, t.args.max_seconds, MAX_CONNECTIONS)
    wrk = {"rps": r["rps"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
           "errors": sum(r["errors"].values()), "requests": r["requests"],
           "server_cpu_ms_per_request": r["server_cpu_s"] * 1000 / max(1, r["requests"]),
           "server_cores": r["server_cpu_s"] / r["seconds"], "wrk_cores": r["generator_cpu_s"] / r["seconds"]}
    sv.wait_idle(t.proc.pid)
    calibration = run_h2load(t.servers, t.url, t.body, round(CALIBRATION * r["rps"]), t.args.calibration_seconds,
                             t.args.rate_period_ms, f"h2load-calibration-{t.label}")
    return {"wrk": wrk, "h2load_at_90": calibration} | t.finish(before)


SLOWHTTPTEST_MODES = {
    "slow-headers": ["-H", "-t", "GET"],
    "slow-body": ["-B", "-t", "POST", "-s", "8192", "-f", "application/json"],
}


def case_slow(t: Target, kind: str) -> dict:
    before = Snapshot(t.proc, t.base)
    seconds = t.args.seconds
    if kind == "slow-silent":
        attack = SilentWaves(t.port, t.args.slow_connections)
    else:
        attack = SlowHttpTest(t.servers, f"{kind}-{t.label}", SLOWHTTPTEST_MODES[kind], t.url,
                              t.args.slow_connections, seconds + 4)
    attack.start()
    time.sleep(2)  # every slow connection open before the normal traffic starts
    normal = t.normal_traffic(seconds)
    waves = attack.stop()
    return {"slow_connections": t.args.slow_connections, "normal": normal, "waves": waves} | t.finish(before)


def case_idle(t: Target) -> dict:
    before = Snapshot(t.proc, t.base)
    peak = RssPeak(t.proc.pid)
    peak.start()
    idle = Silent(t.port, t.args.idle_connections)
    idle.start()
    idle.ready.wait()
    held = time.monotonic()
    normal = t.normal_traffic(max(t.args.idle_seconds, CLIENT_TIMEOUT + CLOSE_MARGIN))
    while len(idle.closed_at) < idle.opened and time.monotonic() - held < CLIENT_TIMEOUT + CLOSE_MARGIN:
        time.sleep(0.2)
    connections = idle.stop()
    rss_peak = peak.stop()
    return {"normal": normal, "connections": connections, "rss_peak_mib": rss_peak} | t.finish(before)


BUSY_FACTOR = 0.5


def case_busy(t: Target, maximum: dict) -> dict:
    """Half the maximum, open loop, on a busy machine: a Python loop burns one core's worth of CPU
    wherever the scheduler puts it, and the server may run on every CPU meanwhile (h2load stays on
    its own)."""
    before = Snapshot(t.proc, t.base)
    every_cpu = sorted(os.sched_getaffinity(t.proc.pid) | set(range(os.cpu_count() or 1)))
    set_group_cpus(t.proc.pid, every_cpu)
    hog = t.servers.start(f"busy-loop-{t.label}", [*taskset(",".join(map(str, every_cpu))), sys.executable, "-c",
                                                   "while True: pass"], os.environ)
    try:
        load = run_h2load(t.servers, t.url, t.body, round(BUSY_FACTOR * maximum["rps"]), t.args.seconds,
                          t.args.rate_period_ms, f"h2load-busy-{t.label}")
    finally:
        t.servers.stop(f"busy-loop-{t.label}")
        if t.args.server_cpu is not None:
            set_group_cpus(t.proc.pid, [t.args.server_cpu])
    return {"factor": BUSY_FACTOR, "load": load, "busy_loop_pid": hog.pid} | t.finish(before)


def set_group_cpus(pgid: int, cpus: list[int]) -> None:
    for process in sv.group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            process.cpu_affinity(cpus)


def case_crowd(t: Target, maximum: dict, connections: int) -> dict:
    """A closed-loop crowd: `connections` clients, each sending its next request as soon as it has an
    answer. wrk counts a non-2xx answer as a status error: here that is a shed request (503), which
    the shed counter confirms."""
    before = Snapshot(t.proc, t.base)
    probe = Poller(t.url, REQUEST_TIMEOUT, t.body.read_bytes())
    probe.start()
    r = run_wrk(t.servers, t.url, t.body, t.args.seconds, connections, threads=2, timeout=REQUEST_TIMEOUT,
                name=f"wrk-crowd-{connections}")
    probes = probe.stop()
    errors = r["errors"]
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    predictions = r["requests"] - errors["status"]
    return {"connections": connections, "requests": r["requests"], "predictions": predictions,
            "shed_503": errors["status"], "socket_errors": socket_errors, "errors": errors,
            "predictions_per_s": predictions / r["duration_s"],
            "vs_max": predictions / r["duration_s"] / maximum["rps"],
            "socket_error_share": socket_errors / max(1, r["requests"] + errors["timeout"]),
            "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "max_ms": r["latency_ms"]["max"],
            "probe": _probe_summary(probes)} | t.finish(before)


def case_overload(t: Target, maximum: dict, factor: float) -> dict:
    before = Snapshot(t.proc, t.base)
    health = Poller(t.base + "/healthz", REQUEST_TIMEOUT)
    probe = Poller(t.url, REQUEST_TIMEOUT, t.body.read_bytes())
    health.start()
    probe.start()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    max_rps = maximum["rps"]
    load = run_h2load(t.servers, t.url, t.body, round(factor * max_rps), t.args.seconds,
                      t.args.rate_period_ms, f"h2load-overload-{factor:g}x-{t.label}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load["generator_cpu_s"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    healthz, probes = health.stop(), probe.stop()
    result = t.finish(before)
    return {
        "factor": factor, "max_rps": max_rps, "load": load, "vs_max": load["ok_rps"] / max_rps,
        "server_cores": result["cpu"]["server_cpu_s"] / result["cpu"]["seconds"],
        "generator_cores": load["generator_cpu_s"] / result["cpu"]["seconds"],
        "predictions": sum(v for k, v in load["status_counts"].items() if k.startswith("2")),
        "shed_503": load["shed_503"],
        "healthz": {"polls": len(healthz), "ok": sum(1 for s, _, _ in healthz if s == 200),
                    "within_target": sum(1 for s, seconds, _ in healthz if s == 200 and seconds <= TARGET_HEALTH_S),
                    "max_s": max((seconds for _, seconds, _ in healthz), default=None),
                    "other": dict(collections.Counter(str(s) for s, _, _ in healthz if s != 200))},
        "probe": _probe_summary(probes),
    } | result


def _probe_summary(probes: list[tuple[int | str, float, dict]]) -> dict:
    shed = [headers for status, _, headers in probes if status == 503]
    return {"sent": len(probes), "statuses": dict(collections.Counter(str(s) for s, _, _ in probes)),
            "shed_with_retry_after": sum(1 for h in shed if "Retry-After" in h), "shed": len(shed)}


def measure(servers: Servers, target: tuple[str, Path, str], model_dir: Path, body: Path, args,
            cases: list[str]) -> dict:
    """Every case against one mnist-serve: `target` is (label, venv, worker class)."""
    label, venv, worker_class = target
    log(f"hostile: {label}: mnist-serve of {venv}, WORKER_CLASS={worker_class}, {WORKERS} workers"
        + (f", on CPU {args.server_cpu}" if args.server_cpu is not None else ""))
    # The service's defaults, also where this process's environment says otherwise.
    defaults = {name: "" for name in ("CLIENT_TIMEOUT", "QUEUE_TIMEOUT", "QUEUE_TIMEOUT_MAX", "BACKLOG",
                                      "QUEUE_LIMIT")}
    proc, base = sv.start_service(servers, f"service-{label}", model_dir, args.model_name, venv=venv,
                               worker_class=worker_class, cpus=args.server_cpu, LOG_LEVEL="WARNING", **defaults)
    t = Target(servers, label, proc, base, body, args)
    get(t.url, 10, body.read_bytes())  # first request: imports and caches warm
    results: dict = {}
    for case in cases:
        log(f"hostile: {label}: {case} ...")
        if case == "max" or (case in ("busy", "crowd", "overload") and "max" not in results):
            results["max"] = case_max(t)
            log(f"hostile: {label}: max {results['max']['wrk']['rps']:,.0f} req/s (wrk -c{MAX_CONNECTIONS})")
        if case in SLOW_CASES:
            results[case] = case_slow(t, case)
            _log_normal(label, case, results[case])
        elif case == "idle":
            results[case] = case_idle(t)
            _log_normal(label, case, results[case])
        elif case == "busy":
            b = results[case] = case_busy(t, results["max"]["wrk"])
            load = b["load"]
            log(f"hostile: {label}: busy machine, {load['offered_rps']:,.0f} req/s offered: {load['ok']:,} 2xx, "
                f"{load['shed_503']:,} 503, {load['no_answer']:,} unanswered")
        elif case == "crowd":
            results[case] = {}
            for connections in args.crowds:
                c = results[case][str(connections)] = case_crowd(t, results["max"]["wrk"], connections)
                log(f"hostile: {label}: crowd of {connections:,}: {c['predictions_per_s']:,.0f} predictions/s "
                    f"({c['vs_max']:.0%} of the max), {c['shed_503']:,} 503, {c['socket_errors']:,} socket errors")
        elif case == "overload":
            results[case] = {}
            for factor in args.overload_factors:
                o = results[case][f"{factor:g}"] = case_overload(t, results["max"]["wrk"], factor)
                log(f"hostile: {label}: overload {factor:g}x: {o['load']['ok_rps']:,.0f} predictions/s "
                    f"({o['vs_max']:.0%} of the max), {o['load']['no_answer']:,} unanswered, /healthz max "
                    f"{o['healthz']['max_s']:.2f} s, others {o['cpu']['other_cpu_cores']:.2f} cores"
                    + (" (busy machine: suspect)" if o["cpu"]["other_cpu_cores"] > BUSY else ""))
    servers.stop(f"service-{label}")
    if cost := shed_cost(results):
        results["shed_cost"] = cost
        log(f"hostile: {label}: server CPU per shed request {cost['shed_ms']:.3f} ms, per prediction under load "
            f"{cost['prediction_ms']:.3f} ms (s = {cost['s']:.3f}; fit over {cost['cases']} cases)")
    return results


def shed_cost(results: dict) -> dict | None:
    """The server's CPU per prediction and per shed request, fitted (least squares) to every crowd and
    overload case: CPU seconds = predictions x a + sheds x b. Predictions under load cost less than at
    the unloaded maximum (no idle wake-ups), so the maximum's cost per request cannot stand in for a."""
    cases = [*results.get("crowd", {}).values(), *results.get("overload", {}).values()]
    if len(cases) < 2:
        return None
    counts = np.array([[c["predictions"], c["shed_503"]] for c in cases], dtype=float)
    cpu = np.array([c["cpu"]["server_cpu_s"] for c in cases])
    (per_prediction, per_shed), *_ = np.linalg.lstsq(counts, cpu, rcond=None)
    return {"prediction_ms": per_prediction * 1000, "shed_ms": per_shed * 1000, "s": per_shed / per_prediction,
            "capacity_per_core": 1 / per_prediction, "cases": len(cases)}


def _log_normal(label: str, case: str, r: dict) -> None:
    n = r["normal"]
    log(f"hostile: {label}: {case}: {n['rps']:,.0f} req/s, p99 {_ms(n['p99_ms'])} ms, {n['error_count']} errors, "
        f"others {r['cpu']['other_cpu_cores']:.2f} cores"
        + (" (busy machine: suspect)" if r["cpu"]["other_cpu_cores"] > BUSY else ""))


# --- report -----------------------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _errors(normal: dict) -> str:
    parts = [f"{v} {k}" for k, v in normal["errors"].items() if v]
    return ", ".join(parts) if parts else "0"


def _probes(normal: dict) -> str:
    return f"{normal['probes_ok']}/{normal['probes']}"


def _cut_off(waves: list[dict]) -> str:
    closed = [w["all_closed_s"] for w in waves if w["all_closed_s"] is not None]
    if not closed:
        first = [w["first_closed_s"] for w in waves if w["first_closed_s"] is not None]
        return "never (held to the end)" + (f"; first closed at {first[0]:.0f} s" if first else "")
    return f"all after {statistics.median(closed):.1f} s ({len(waves)} wave{'s' if len(waves) > 1 else ''})"


def _workers(r: dict) -> str:
    return "replaced" if r["workers_replaced"] else "same"


def _counter(r: dict, key: str) -> str:
    return "-" if not r["counters"] else f"{r['counters'][key]:,.0f}"


def report(args, out: dict, env: dict) -> tuple[str, str]:
    results, text = out["results"], []
    rows = []
    for cls, r in results.items():
        if "max" in r:
            m = r["max"]
            cal = m["h2load_at_90"]
            rows.append([cls, f"{m['wrk']['rps']:,.0f}", _ms(m["wrk"]["p50_ms"]), _ms(m["wrk"]["p99_ms"]),
                         m["wrk"]["errors"], f"{cal['offered_rps']:,.0f}", f"{cal['ok_rps']:,.0f}",
                         f"{cal['shed_503']:,}", f"{cal['no_answer']:,}",
                         _ms(cal["ok_ms"]["p99"]), f"{m['cpu']['other_cpu_cores']:.2f}"])
    if rows:
        text.append("Unloaded maximum (wrk -t1 -c16, closed loop; then h2load open loop at 90 % of that rate, "
                    "a connection per request):\n\n" + markdown_table(
                        ["worker class", "wrk req/s", "p50 ms", "p99 ms", "errors", "h2load offered/s", "h2load 2xx/s",
                         "503", "no answer", "h2load p99 ms", "others' cores"], rows))
    rows = []
    for cls, r in results.items():
        for case in (c for c in SLOW_CASES + ("idle",) if c in r):
            c, n = r[case], r[case]["normal"]
            if case == "idle":
                conn = c["connections"]
                cut = (f"{conn['closed_by_server']}/{conn['opened']} closed, last at {_ms(conn['all_closed_s'])} s"
                       if conn["all_closed_s"] is not None else
                       f"{conn['closed_by_server']}/{conn['opened']} closed by the server")
                what = f"{conn['opened']:,} idle connections"
                rss = f"{c['rss_before_mib']:.0f} / {c['rss_peak_mib']:.0f} / {c['rss_after_mib']:.0f}"
            else:
                cut, what = _cut_off(c["waves"]), f"{c['slow_connections']} {case}"
                rss = f"{c['rss_before_mib']:.0f} / - / {c['rss_after_mib']:.0f}"
            rows.append([cls, what, f"{n['rps']:,.0f}", _ms(n["p99_ms"]), _errors(n), _probes(n), cut,
                         _counter(c, "client_timeouts"), _workers(c), rss, f"{c['cpu']['other_cpu_cores']:.2f}"])
    if rows:
        text.append(f"\nNormal traffic (wrk -t1 -c{NORMAL_CONNECTIONS} --timeout {NORMAL_TIMEOUT:g}s, single-instance "
                    "JSON) beside slow or idle connections:\n\n" + markdown_table(
                        ["worker class", "beside", "req/s", "p99 ms", "wrk errors", "probes answered within 2 s",
                         "slow/idle connections cut off",
                         "client timeouts", "workers", "RSS MiB before / peak / after", "others' cores"], rows))
    rows = []
    for cls, r in results.items():
        if b := r.get("busy"):
            load = b["load"]
            rows.append([cls, f"{load['offered_rps']:,.0f}", f"{load['requests']:,}", f"{load['ok']:,}",
                         f"{load['shed_503']:,}", f"{load['no_answer']:,}",
                         f"{_ms(load['answered_ms']['p50'])} / {_ms(load['answered_ms']['p99'])}", _counter(b, "shed")])
    if rows:
        text.append("\nA busy machine (a Python loop burning a core, the server on every core) and h2load at "
                    f"{BUSY_FACTOR:g}x the maximum, open loop:\n\n" + markdown_table(
                        ["server", "offered req/s", "requests", "2xx within 2 s", "503", "no answer",
                         "p50 / p99 ms", "shed counter"], rows))
    rows = []
    for cls, r in results.items():
        for c in r.get("crowd", {}).values():
            rows.append([cls, f"{c['connections']:,}", f"{c['requests']:,}", f"{c['predictions_per_s']:,.0f} "
                         f"({c['vs_max']:.0%})", f"{c['shed_503']:,} ({c['probe']['shed_with_retry_after']}/"
                         f"{c['probe']['shed']})", f"{c['socket_errors']:,} ({c['socket_error_share']:.2%})",
                         f"{_ms(c['p50_ms'])} / {_ms(c['p99_ms'])}", _workers(c),
                         f"{c['rss_before_mib']:.0f} / {c['rss_after_mib']:.0f}", _counter(c, "shed"),
                         f"{c['cpu']['other_cpu_cores']:.2f}"])
    if rows:
        text.append(f"\nCrowds (wrk -t2 -cN --timeout {REQUEST_TIMEOUT}s, closed loop: each client sends its next "
                    "request as soon as it has an answer, 503s included):\n\n" + markdown_table(
                        ["server", "connections", "requests", "predictions/s (vs max)", "503 (probes with Retry-After)",
                         "socket errors and timeouts", "p50 / p99 ms", "workers", "RSS MiB before / after",
                         "shed counter", "others' cores"], rows))
    rows, cpu_rows = [], []
    for cls, r in results.items():
        for o in r.get("overload", {}).values():
            load, h = o["load"], o["healthz"]
            stopped = " *" if load["stopped_at_deadline"] else ""
            late = f" (+{load['late_2xx']:,} later)" if load["late_2xx"] else ""
            rows.append([cls, f"{o['factor']:g}x", f"{load['offered_rps']:,.0f}", f"{load['requests']:,}{stopped}",
                         f"{load['ok']:,}{late}",
                         f"{load['shed_503']:,} ({o['probe']['shed_with_retry_after']}/{o['probe']['shed']})",
                         f"{load['no_answer']:,}",
                         f"{_ms(load['answered_ms']['p99'])} / {_ms(load['answered_ms']['max'])}",
                         f"{load['ok_rps']:,.0f} ({o['vs_max']:.0%})",
                         f"{h['within_target']}/{h['polls']} (max {h['max_s']:.2f} s)", _workers(o),
                         f"{o['rss_before_mib']:.0f} / {o['rss_after_mib']:.0f}", _counter(o, "shed")])
            cpu_rows.append([cls, f"{o['factor']:g}x", f"{r['max']['wrk']['server_cores']:.2f}",
                             f"{r['max']['wrk']['wrk_cores']:.2f}", f"{o['server_cores']:.2f}",
                             f"{o['generator_cores']:.2f}", f"{r['max']['wrk']['server_cpu_ms_per_request']:.3f}",
                             f"{o['cpu']['other_cpu_cores']:.2f}"])
    if rows:
        text.append(f"\nOverload (h2load: a new connection per request at a factor of the unloaded maximum "
                    f"(wrk's), {REQUEST_TIMEOUT} s timeout each; /healthz polled every {POLL_PERIOD:g} s):\n\n"
                    + markdown_table(
                        ["server", "factor", "offered req/s", "requests", "2xx within 2 s",
                         "503 (probes with Retry-After)", "no answer (timeout, error, not sent)",
                         "p99 / max ms of answers", "predictions/s (vs max)",
                         f"/healthz 200 within {TARGET_HEALTH_S:g} s", "workers", "RSS MiB before / after",
                         "shed counter"], rows))
        if any(o["load"]["stopped_at_deadline"] for r in results.values() for o in r.get("overload", {}).values()):
            text.append(f"\n\\* h2load stopped {REQUEST_TIMEOUT + H2LOAD_GRACE} s after its last request was due: "
                        "its connect()s to a full accept queue would go on for minutes.")
        text.append("\nWhere the CPU went, at the unloaded maximum (wrk) and under overload (h2load):\n\n"
                    + markdown_table(["server", "factor", "server cores at max", "wrk cores",
                                      "server cores in overload", "h2load cores",
                                      "server CPU ms per request at max", "others' cores"], cpu_rows))
    rows = [[cls, f"{c['prediction_ms']:.3f}", f"{c['capacity_per_core']:,.0f}", f"{c['shed_ms']:.3f}",
             f"{c['s']:.3f}", c["cases"]] for cls, r in results.items() if (c := r.get("shed_cost"))]
    if rows:
        text.append("\nWhat a shed request costs: the server's CPU seconds of every crowd and overload case fitted "
                    "(least squares) as predictions x a + shed requests x b; s = b / a:\n\n" + markdown_table(
                        ["server", "a: CPU ms per prediction under load", "predictions/s per core (1 / a)",
                         "b: CPU ms per shed request", "s", "cases"], rows))
    if "gevent" in results:
        verdict = judge(results["gevent"])
        text.append("\nTargets for the default worker (gevent):\n" + "\n".join(
            f"- {name}: {'met' if ok else 'MISSED'}" for name, ok in verdict.items()))
    pinning = (f"server on CPU {args.server_cpu}, load generators on the other (taskset)"
               if args.server_cpu is not None else "server and load generators sharing the CPUs")
    heading = (f"bench/service/run hostile: {WORKERS} server workers each (gthread: {GTHREAD_THREADS} threads), "
               f"CLIENT_TIMEOUT {CLIENT_TIMEOUT:g} s, QUEUE_TIMEOUT {DEFAULTS.queue_timeout:g} s, QUEUE_TIMEOUT_MAX "
               f"{DEFAULTS.queue_timeout_max:g} s, BACKLOG {DEFAULTS.backlog} (somaxconn {out['somaxconn']}); "
               f"{pinning}; gunicorn {env['gunicorn']}, gevent {env['gevent']}, {env['wrk']}, {env['h2load']}, "
               f"{env['slowhttptest']}")
    return heading, "\n".join(text)


def judge(r: dict) -> dict[str, bool]:
    verdict = {}
    for case in (c for c in SLOW_CASES if c in r):
        n = r[case]["normal"]
        verdict[f"{case}: 0 errors, p99 < {TARGET_SLOW_P99_MS} ms, workers kept"] = (
            n["error_count"] == 0 and n["probes_ok"] == n["probes"] and n["requests"] > 0
            and n["p99_ms"] < TARGET_SLOW_P99_MS and not r[case]["workers_replaced"])
    if "idle" in r:
        i = r["idle"]
        conn = i["connections"]
        verdict[f"idle: 0 errors, all closed within {CLIENT_TIMEOUT + CLOSE_MARGIN:g} s, RSS back within 10 %"] = (
            i["normal"]["error_count"] == 0 and i["normal"]["probes_ok"] == i["normal"]["probes"]
            and conn["all_closed_s"] is not None
            and conn["all_closed_s"] <= CLIENT_TIMEOUT + CLOSE_MARGIN
            and i["rss_after_mib"] <= TARGET_RSS_GROWTH * i["rss_before_mib"])
    if b := r.get("busy"):
        verdict[f"busy machine, {BUSY_FACTOR:g}x the maximum: no 503, every request answered"] = (
            b["load"]["shed_503"] == 0 and b["load"]["no_answer"] == 0 and b["load"]["ok"] == b["load"]["requests"])
    for c in r.get("crowd", {}).values():
        limit = TARGET_CROWD_SOCKET_ERRORS.get(c["connections"], max(TARGET_CROWD_SOCKET_ERRORS.values()))
        verdict[f"crowd of {c['connections']:,}: predictions/s >= {TARGET_CROWD_VS_MAX:.0%} of the maximum, "
                f"socket errors and timeouts <= {limit:.1%}, 503s carry Retry-After"] = (
            c["vs_max"] >= TARGET_CROWD_VS_MAX and c["socket_error_share"] <= limit
            and c["probe"]["shed_with_retry_after"] == c["probe"]["shed"])
    for key, o in r.get("overload", {}).items():
        target = TARGET_OVERLOAD_VS_MAX.get(o["factor"])
        if target is not None:
            verdict[f"overload {key}x: predictions/s >= {target:.0%} of the maximum"] = o["vs_max"] >= target
        load = o["load"]
        verdict[f"overload {key}x: every request answered within {REQUEST_TIMEOUT} s (a prediction or a 503 with "
                f"Retry-After), /healthz all 200 within {TARGET_HEALTH_S:g} s, workers kept, RSS within 10 %"] = (
            load["no_answer"] == 0 and load["answered_ms"]["max"] is not None
            and load["answered_ms"]["max"] <= REQUEST_TIMEOUT * 1000
            and o["healthz"]["within_target"] == o["healthz"]["polls"] > 0 and not o["workers_replaced"]
            and o["probe"]["shed_with_retry_after"] == o["probe"]["shed"]
            and o["rss_after_mib"] <= TARGET_RSS_GROWTH * o["rss_before_mib"])
    return verdict


def raise_open_files(needed: int) -> None:
    """Lift the soft limit on open files (inherited by h2load and wrk) towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        log(f"hostile: only {wanted} open files allowed (ulimit -n); {needed} wanted")


def numbers(text: str, type_=float) -> list:
    """A comma-separated list of numbers, for argparse."""
    try:
        values = [type_(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers above 0")
    return values


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def raise_somaxconn(backlog: int) -> int | None:
    """The kernel's cap on listen backlogs, raised to the service's BACKLOG when it is lower and this
    runs as root (crowds of thousands of connections need it; README.md's configuration table)."""
    try:
        cap = int(SOMAXCONN.read_text())
        if cap < backlog and os.geteuid() == 0:
            SOMAXCONN.write_text(str(backlog))
            log(f"hostile: net.core.somaxconn {cap} -> {backlog}, the service's BACKLOG")
            cap = backlog
    except (OSError, ValueError):
        return None
    if cap < backlog:
        log(f"hostile: net.core.somaxconn is {cap}, under the service's BACKLOG {backlog}: crowds larger than "
            "that wait for SYN retransmissions (run as root to raise it)")
    return cap


def run(args, servers: Servers, test, model_dir: Path) -> dict:
    args.server_cpu = pin_self("hostile", args.pin)
    body = sv.single_body(test, servers.workdir)
    targets = [(cls, sv.SERVICE_VENV, cls) for cls in args.classes]
    checkout = None
    try:
        if args.baseline:
            checkout = sv.Checkout(args.baseline, servers.workdir, "baseline").create()
            targets.append((f"gevent@{checkout.commit}", checkout.venv, "gevent"))
        results = {label: measure(servers, (label, venv, cls), model_dir, body, args, args.case_list)
                   for label, venv, cls in targets}
        return {"somaxconn": args.somaxconn, "results": results,
                "verdict": judge(results["gevent"]) if "gevent" in results else {}}
    finally:
        if checkout:
            checkout.remove()


def main() -> int:
    parser = sv.parser("bench/service/run hostile", __doc__)
    parser.add_argument("--worker-classes", default=",".join(CLASSES), help=f"comma-separated [{','.join(CLASSES)}]")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--seconds", type=float, default=30,
                        help="seconds of normal traffic beside slow connections, of each crowd and of each overload "
                             "[30]")
    parser.add_argument("--max-seconds", type=float, default=10, help="seconds of wrk for the unloaded maximum [10]")
    parser.add_argument("--calibration-seconds", type=float, default=5,
                        help="seconds of h2load at 90 %% of the maximum [5]")
    parser.add_argument("--idle-seconds", type=float, default=CLIENT_TIMEOUT + CLOSE_MARGIN,
                        help=f"seconds of normal traffic beside idle connections [{CLIENT_TIMEOUT + CLOSE_MARGIN:g}]")
    parser.add_argument("--slow-connections", type=int, default=64, help="slow connections [64]")
    parser.add_argument("--idle-connections", type=int, default=1000, help="idle connections [1000]")
    parser.add_argument("--crowds", type=lambda t: numbers(t, int), default=list(CROWDS),
                        help=f"closed-loop crowd sizes, comma-separated [{','.join(map(str, CROWDS))}]")
    parser.add_argument("--overload-factors", type=numbers, default=[2.0, 3.0, 5.0],
                        help="offered rates / unloaded maximum, comma-separated [2,3,5]")
    parser.add_argument("--rate-period-ms", type=int, default=100,
                        help="h2load opens rate x period connections at the start of each period [100]")
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure REF's mnist-serve (a git worktree with its own venv), gevent, its defaults")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the server and the load generators share every CPU (default: one core each)")
    args = parser.parse_args()
    args.classes = [c for c in args.worker_classes.split(",") if c]
    args.case_list = [c for c in CASES if c in args.cases.split(",")]
    if set(args.classes) - set(CLASSES) or not args.classes:
        parser.error(f"--worker-classes: choose from {','.join(CLASSES)}")
    if set(args.cases.split(",")) - set(CASES) or not args.case_list:
        parser.error(f"--cases: choose from {','.join(CASES)}")
    raise_open_files(max(args.idle_connections, *args.crowds) + 16 * 1024)
    args.somaxconn = raise_somaxconn(DEFAULTS.backlog) if "crowd" in args.case_list else None
    return sv.main("hostile", args, run, report, (), ("gunicorn", "gevent", "flask"),
                   wrk=(tool_version(["wrk", "--version"]) or "").split(" [")[0],
                   h2load=tool_version(["h2load", "--version"]),
                   slowhttptest=tool_version(["slowhttptest", "-h"], "version"))


if __name__ == "__main__":
    sys.exit(main())
