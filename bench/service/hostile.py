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
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import BUSY, latency_ms, log, pin_self, table, taskset, tool_version
from bench.service import servers as sv
from bench.service.servers import GTHREAD_THREADS, WORKERS, Servers, run_wrk
from mnist_service.settings import Settings

CLASSES = ("gevent", "sync", "gthread")
CASES = ("max", "slow-headers", "slow-body", "slow-silent", "idle", "busy", "crowd", "overload")
SLOW_CASES = ("slow-headers", "slow-body", "slow-silent")
SLOWHTTPTEST_MODES = {"slow-headers": ["-H", "-t", "GET"],
                      "slow-body": ["-B", "-t", "POST", "-s", "8192", "-f", "application/json"]}
DEFAULTS = Settings()  # the service's defaults, which every server here runs with
CLIENT_TIMEOUT = DEFAULTS.client_timeout
CLOSE_MARGIN = 3.0  # idle connections must all be closed within CLIENT_TIMEOUT + this
NORMAL_CONNECTIONS, NORMAL_TIMEOUT = 4, 2.0  # the normal traffic beside slow or idle connections
MAX_CONNECTIONS = 16  # the unloaded maximum, as bench/service/run measures it
REQUEST_TIMEOUT = 2  # h2load -T: seconds a request (= a connection) may take under overload
H2LOAD_GRACE = 3  # h2load is stopped this long after its last request's timeout (run_h2load)
POLL_PERIOD = 0.5
CALIBRATION = 0.9  # h2load at this fraction of wrk's maximum: the open-loop check of that maximum
BUSY_FACTOR = 0.5  # the busy machine's offered rate, of the maximum
CROWDS = (256, 1000, 8000)
MiB = 1 << 20
# Targets for the default worker (gevent).
TARGET_SLOW_P99_MS = 1000
TARGET_CROWD_VS_MAX = 0.80
TARGET_CROWD_SOCKET_ERRORS = {256: 0.001, 1000: 0.001, 8000: 0.01}  # share of requests, by crowd
TARGET_OVERLOAD_VS_MAX = {2: 0.75, 3: 0.50}  # by factor; at any other, only: every request answered
TARGET_HEALTH_S = 0.5
TARGET_RSS_GROWTH = 1.10


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
    return {key: sum(sv.totals(samples, f"mnist_{name}_total").values())
            for key, name in (("client_timeouts", "client_timeouts"), ("shed", "http_requests_shed"))}


@contextlib.contextmanager
def background(loop, grace: float = 0):
    """loop(stopping) in a thread for the block; then (after `grace` s for it to end by itself) `stopping`
    is set and the thread joined."""
    stopping = threading.Event()
    thread = threading.Thread(target=loop, args=(stopping,), daemon=True)
    thread.start()
    try:
        yield stopping
    finally:
        thread.join(grace)
        stopping.set()
        thread.join()


def every(period: float, step):
    """A loop for background(): step() every `period` seconds until stopped."""
    def loop(stopping: threading.Event) -> None:
        due = time.monotonic()
        while not stopping.is_set():
            step()
            due += period
            stopping.wait(max(0.0, due - time.monotonic()))
    return loop


def silent(port: int, count: int, until, opened: threading.Event) -> dict:
    """`count` connections that send nothing, held until the server has closed them all or until();
    when the server closed each (seconds after all were open) and the first line of what it sent."""
    selector, sockets, failed, closed_at, answers = selectors.DefaultSelector(), set(), 0, [], collections.Counter()
    started = time.monotonic()
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.settimeout(3)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                failed += 1
                sock.close()
                continue
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            sockets.add(sock)
        total, open_s, started = len(sockets), time.monotonic() - started, time.monotonic()
        opened.set()
        while sockets and not until():
            for key, _ in selector.select(0.1):
                with contextlib.suppress(OSError):  # a reset: closed
                    if data := key.fileobj.recv(4096):
                        answers[data.split(b"\r\n", 1)[0].decode(errors="replace")[:40]] += 1
                        continue
                closed_at.append(time.monotonic() - started)
                selector.unregister(key.fileobj)
                key.fileobj.close()
                sockets.discard(key.fileobj)
    finally:
        opened.set()
        for sock in sockets:
            sock.close()
    return {"opened": total, "max_connected": total, "failed": failed, "open_s": open_s,
            "closed_by_server": len(closed_at), "first_closed_s": min(closed_at, default=None),
            "all_closed_s": max(closed_at) if closed_at and len(closed_at) == total else None,
            "answers": dict(answers)}


def slowhttptest_wave(servers: Servers, name: str, mode: list[str], url: str, connections: int, seconds: float,
                      stopping: threading.Event) -> dict:
    """One slowhttptest run, which ends when the server has closed all its connections (or after
    `seconds`, or when stopped): how long it lasted, its exit status and its CSV's figures."""
    out = servers.workdir / name
    proc = servers.start(name, ["slowhttptest", *mode, "-c", str(connections), "-r", str(connections), "-i", "1",
                                "-x", "2", "-p", "2", "-l", str(math.ceil(seconds)), "-g", "-o", str(out), "-u", url],
                         dict(os.environ))
    started = time.monotonic()
    while proc.poll() is None and not stopping.is_set():
        time.sleep(0.05)
    lasted = time.monotonic() - started
    servers.stop(name)  # only still running when stopped before its end
    status = re.search(r"Exit status:\s*(?:\x1b\[[0-9;]*m)*([^\x1b\n]*)", read(proc.log_path))
    lines = read(out.with_suffix(".csv")).splitlines()  # Seconds, Closed, Pending, Connected, ... once a second
    rows = [dict(zip(lines[0].split(","), map(int, line.split(",")))) for line in lines[1:]
            if line.count(",") == lines[0].count(",")]
    return {"lasted_s": lasted, "exit_status": status.group(1).strip() if status else "stopped at the end",
            "max_connected": max((r["Connected"] for r in rows), default=0),
            "first_closed_s": next((r["Seconds"] for r in rows if r["Closed"] > 0), None),
            "all_closed_s": lasted if status and "No open connections" in status.group(1) else None}


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


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


def probe_summary(probes: list[tuple[int | str, float, dict]]) -> dict:
    shed = [headers for status, _, headers in probes if status == 503]
    return {"sent": len(probes), "statuses": dict(collections.Counter(str(s) for s, _, _ in probes)),
            "shed_with_retry_after": sum(1 for h in shed if "Retry-After" in h), "shed": len(shed)}


class Target:
    """One mnist-serve under test, what every case needs to load it, and what a case compares."""

    def __init__(self, servers: Servers, label: str, proc, base: str, body: Path, args):
        self.servers, self.label, self.proc, self.base, self.body, self.args = servers, label, proc, base, body, args
        self.url, self.port, self.pgid = base + "/v1/predict", int(base.rsplit(":", 1)[1]), proc.pid

    @contextlib.contextmanager
    def case(self):
        """Yields a dict for the case's figures, to which are added, once the server has recovered
        (/healthz 200 again and idle), its worker pids, RSS, counters and CPU before and after."""
        def workers() -> list[int]:  # the gunicorn arbiter's children
            return sorted(pid for pid, parent in sv.group_each(self.pgid, psutil.Process.ppid).items()
                          if parent == self.pgid)

        pids, rss, before, meter = workers(), sv.group_rss_bytes(self.pgid), counters(self.base), sv.CpuMeter(self.pgid)
        result: dict = {}
        yield result
        started, recovered = time.monotonic(), None
        while recovered is None and time.monotonic() - started < 60:
            if get(self.base + "/healthz", timeout=2)[0] == 200:
                sv.wait_idle(self.pgid)
                recovered = time.monotonic() - started
            else:
                time.sleep(0.5)
        cpu, after = meter.read(), counters(self.base)
        result |= {"workers_before": pids, "workers_after": workers(), "rss_before_mib": rss / MiB,
                   "rss_after_mib": sv.group_rss_bytes(self.pgid) / MiB, "recovered_s": recovered, "cpu": cpu,
                   "counters": {k: after[k] - before[k] for k in after} if after and before else None}
        result["workers_replaced"] = result["workers_after"] != pids

    def probe(self, answers: list, url: str | None = None, timeout: float = REQUEST_TIMEOUT):
        """A loop for background(): a request every POLL_PERIOD s on its own connection (a prediction, or
        a GET of `url`), its answer appended to `answers`."""
        body = None if url else self.body.read_bytes()
        return every(POLL_PERIOD, lambda: answers.append(get(url or self.url, timeout, body)))

    def normal_traffic(self, seconds: float) -> dict:
        """wrk's figures, and a probe's: wrk counts no request that never gets an answer, so one POST
        every POLL_PERIOD s on its own connection with a NORMAL_TIMEOUT s timeout counts those."""
        answers = []
        with background(self.probe(answers, timeout=NORMAL_TIMEOUT)):
            r = run_wrk(self.servers, self.url, self.body, seconds, NORMAL_CONNECTIONS, timeout=NORMAL_TIMEOUT,
                        name="wrk-normal")
        return {"rps": r["rps"], "requests": r["requests"], "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"] if r["requests"] else None, "max_ms": r["latency_ms"]["max"],
                "errors": r["errors"], "error_count": sum(r["errors"].values()), "probes": len(answers),
                "probes_ok": sum(1 for status, _, _ in answers if status == 200),
                "probe_failures": dict(collections.Counter(str(st) for st, _, _ in answers if st != 200))}

    def h2load(self, factor: float, maximum: dict, seconds: float, what: str) -> dict:
        return run_h2load(self.servers, self.url, self.body, round(factor * maximum["rps"]), seconds,
                          self.args.rate_period_ms, f"h2load-{what}-{self.label}")


def case_max(t: Target) -> dict:
    """wrk -c16, closed loop, a new connection per request as the crowds and overloads open them; then h2load
    open loop at 90 % of that rate, as a check of that maximum."""
    with t.case() as result:
        r = result["wrk"] = sv.measure_wrk(t.servers, t.pgid, t.url, t.body, t.args.max_seconds, MAX_CONNECTIONS,
                                           headers=("Connection: close",))  # as the crowds: a connection each
        r |= {"server_cores": r["server_cpu_s"] / r["seconds"], "wrk_cores": r["generator_cpu_s"] / r["seconds"]}
        sv.wait_idle(t.pgid)
        result["h2load_at_90"] = t.h2load(CALIBRATION, r, t.args.calibration_seconds, "calibration")
    return result


def case_slow(t: Target, kind: str) -> dict:
    """Slow connections in waves (a new wave whenever the server has closed every connection of the
    last one, as an attacker would), opened 2 s before the normal traffic and kept to its end."""
    waves, seconds, started, opened = [], t.args.seconds, time.monotonic(), threading.Event()

    def attack(stopping: threading.Event) -> None:
        while not stopping.is_set() and (left := seconds + 4 - (time.monotonic() - started)) >= 2:
            wave_started = time.monotonic() - started
            if kind == "slow-silent":
                wave = silent(t.port, t.args.slow_connections, stopping.is_set, opened)
            else:
                wave = slowhttptest_wave(t.servers, f"{kind}-{t.label}-{len(waves)}", SLOWHTTPTEST_MODES[kind],
                                         t.url, t.args.slow_connections, left, stopping)
            waves.append({"started_s": wave_started} | wave)
            if not wave["max_connected"]:
                break

    with t.case() as result:
        # The last slowhttptest wave ends by its own -l soon after the traffic (so its CSV is written).
        with background(attack, grace=0 if kind == "slow-silent" else 10):
            time.sleep(2)  # every slow connection open before the normal traffic starts
            result["normal"] = t.normal_traffic(seconds)
        result |= {"slow_connections": t.args.slow_connections, "waves": waves}
    return result


def case_idle(t: Target) -> dict:
    """Idle connections during normal traffic: when the server closed them, and its RSS."""
    limit, rss, held, opened = CLIENT_TIMEOUT + CLOSE_MARGIN, [], {}, threading.Event()
    with t.case() as result, background(every(1.0, lambda: rss.append(sv.group_rss_bytes(t.pgid)))):
        with background(lambda stopping: held.update(silent(t.port, t.args.idle_connections, stopping.is_set,
                                                            opened))):
            opened.wait()
            deadline = time.monotonic() + limit
            result["normal"] = t.normal_traffic(max(t.args.idle_seconds, limit))
            while not held and time.monotonic() < deadline:  # silent() returns once the server closed them all
                time.sleep(0.2)
        result |= {"connections": held, "rss_peak_mib": max(rss, default=0) / MiB}
    return result


def case_busy(t: Target, maximum: dict) -> dict:
    """Half the maximum, open loop, while a Python loop burns one core's worth of CPU wherever the
    scheduler puts it and the server may run on every CPU (h2load stays on its own): nothing may be shed."""
    def cpus(which: list[int]) -> None:
        for process in sv.group_processes(t.pgid):
            with contextlib.suppress(psutil.Error):
                process.cpu_affinity(which)

    every_cpu, name = sorted(os.sched_getaffinity(t.pgid) | set(range(os.cpu_count() or 1))), f"busy-loop-{t.label}"
    with t.case() as result:
        cpus(every_cpu)
        hog = t.servers.start(name, [*taskset(",".join(map(str, every_cpu))), sys.executable, "-c",
                                     "while True: pass"], dict(os.environ))
        try:
            result |= {"factor": BUSY_FACTOR, "busy_loop_pid": hog.pid,
                       "load": t.h2load(BUSY_FACTOR, maximum, t.args.seconds, "busy")}
        finally:
            t.servers.stop(name)
            if t.args.server_cpu is not None:
                cpus([t.args.server_cpu])
    return result


def case_crowd(t: Target, maximum: dict, connections: int) -> dict:
    """A closed-loop crowd: `connections` clients, each sending its next request as soon as it has an
    answer. wrk counts a non-2xx answer as a status error: here a shed request (503)."""
    probes = []
    with t.case() as result:
        with background(t.probe(probes)):
            r = run_wrk(t.servers, t.url, t.body, t.args.seconds, connections, threads=2, timeout=REQUEST_TIMEOUT,
                        name=f"wrk-crowd-{connections}")
        errors = r["errors"]
        socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
        predictions = r["requests"] - errors["status"]
        result |= {"connections": connections, "requests": r["requests"], "predictions": predictions,
                   "shed_503": errors["status"], "socket_errors": socket_errors, "errors": errors,
                   "predictions_per_s": predictions / r["duration_s"],
                   "vs_max": predictions / r["duration_s"] / maximum["rps"],
                   "socket_error_share": socket_errors / max(1, r["requests"] + errors["timeout"]),
                   "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                   "max_ms": r["latency_ms"]["max"], "probe": probe_summary(probes)}
    return result


def case_overload(t: Target, maximum: dict, factor: float) -> dict:
    """h2load at `factor` x the maximum, a new connection per request; /healthz and a prediction polled."""
    health, probes = [], []
    with t.case() as result:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with background(t.probe(health, t.base + "/healthz")), background(t.probe(probes)):
            load = t.h2load(factor, maximum, t.args.seconds, f"overload-{factor:g}x")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load["generator_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        result |= {"factor": factor, "max_rps": maximum["rps"], "load": load, "vs_max": load["ok_rps"] / maximum["rps"],
                   "predictions": sum(v for k, v in load["status_counts"].items() if k.startswith("2")),
                   "shed_503": load["shed_503"], "probe": probe_summary(probes),
                   "healthz": {"polls": len(health), "ok": sum(1 for s, _, _ in health if s == 200),
                               "within_target": sum(1 for s, sec, _ in health if s == 200 and sec <= TARGET_HEALTH_S),
                               "max_s": max((sec for _, sec, _ in health), default=None),
                               "other": dict(collections.Counter(str(s) for s, _, _ in health if s != 200))}}
    return result | {"server_cores": result["cpu"]["server_cpu_s"] / result["cpu"]["seconds"],
                     "generator_cores": load["generator_cpu_s"] / result["cpu"]["seconds"]}


def measure(servers: Servers, worker_class: str, model_dir: Path, body: Path, args) -> dict:
    """Every case against one mnist-serve, with the service's defaults (also where this process's
    environment says otherwise)."""
    label = worker_class
    log(f"hostile: {label}: mnist-serve, WORKER_CLASS={worker_class}, {WORKERS} workers"
        + (f", on CPU {args.server_cpu}" if args.server_cpu is not None else ""))
    defaults = dict.fromkeys(("CLIENT_TIMEOUT", "QUEUE_TIMEOUT", "QUEUE_TIMEOUT_MAX", "BACKLOG", "QUEUE_LIMIT"), "")
    proc, base = sv.start_service(servers, f"service-{label}", model_dir, args.model_name, worker_class=worker_class,
                                  cpus=args.server_cpu, LOG_LEVEL="WARNING", **defaults)
    t, results = Target(servers, label, proc, base, body, args), {}
    get(t.url, 10, body.read_bytes())  # first request: imports and caches warm
    for case in args.case_list:
        log(f"hostile: {label}: {case} ...")
        if case == "max" or (case in ("busy", "crowd", "overload") and "max" not in results):
            results["max"] = case_max(t)
            log(f"hostile: {label}: max {results['max']['wrk']['rps']:,.0f} req/s (wrk -c{MAX_CONNECTIONS})")
        maximum = results["max"]["wrk"] if "max" in results else None
        if case in (*SLOW_CASES, "idle"):
            r = results[case] = case_idle(t) if case == "idle" else case_slow(t, case)
            n, other = r["normal"], r["cpu"]["other_cpu_cores"]
            log(f"hostile: {label}: {case}: {n['rps']:,.0f} req/s, p99 {fmt_ms(n['p99_ms'])} ms, {n['error_count']} "
                f"errors, others {other:.2f} cores" + (" (busy machine: suspect)" if other > BUSY else ""))
        elif case == "busy":
            results[case] = case_busy(t, maximum)
            load = results[case]["load"]
            log(f"hostile: {label}: busy machine, {load['offered_rps']:,.0f} req/s offered: {load['ok']:,} 2xx, "
                f"{load['shed_503']:,} 503, {load['no_answer']:,} unanswered")
        elif case == "crowd":
            for connections in args.crowds:
                c = results.setdefault(case, {})[str(connections)] = case_crowd(t, maximum, connections)
                log(f"hostile: {label}: crowd of {connections:,}: {c['predictions_per_s']:,.0f} predictions/s "
                    f"({c['vs_max']:.0%} of the max), {c['shed_503']:,} 503, {c['socket_errors']:,} socket errors")
        elif case == "overload":
            for factor in args.overload_factors:
                o = results.setdefault(case, {})[f"{factor:g}"] = case_overload(t, maximum, factor)
                log(f"hostile: {label}: overload {factor:g}x: {o['load']['ok_rps']:,.0f} predictions/s "
                    f"({o['vs_max']:.0%} of the max), {o['load']['no_answer']:,} unanswered, /healthz max "
                    f"{o['healthz']['max_s']:.2f} s, others {o['cpu']['other_cpu_cores']:.2f} cores")
    servers.stop(f"service-{label}")
    # The server's CPU per prediction and per shed request, fitted (least squares) to every crowd and
    # overload case: CPU seconds = predictions x a + sheds x b. Predictions under load cost less than at
    # the unloaded maximum (no idle wake-ups), so the maximum's cost per request cannot stand in for a.
    if len(fitted := [*results.get("crowd", {}).values(), *results.get("overload", {}).values()]) >= 2:
        (a, b), *_ = np.linalg.lstsq(np.array([[c["predictions"], c["shed_503"]] for c in fitted], dtype=float),
                                     np.array([c["cpu"]["server_cpu_s"] for c in fitted]), rcond=None)
        results["shed_cost"] = {"prediction_ms": a * 1000, "shed_ms": b * 1000, "s": b / a, "capacity_per_core": 1 / a,
                                "cases": len(fitted)}
        log(f"hostile: {label}: server CPU per shed request {b * 1000:.3f} ms, per prediction under load "
            f"{a * 1000:.3f} ms (s = {b / a:.3f}; fit over {len(fitted)} cases)")
    return results


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def cut_off(c: dict) -> str:
    """When the server closed the slow or idle connections."""
    if conn := c.get("connections"):
        return f"{conn['closed_by_server']}/{conn['opened']} closed" + (
            f", last at {fmt_ms(conn['all_closed_s'])} s" if conn["all_closed_s"] is not None else " by the server")
    if closed := [w["all_closed_s"] for w in c["waves"] if w["all_closed_s"] is not None]:
        return f"all after {statistics.median(closed):.1f} s ({len(c['waves'])} wave{'s' * (len(c['waves']) > 1)})"
    first = [w["first_closed_s"] for w in c["waves"] if w["first_closed_s"] is not None]
    return "never (held to the end)" + (f"; first closed at {first[0]:.0f} s" if first else "")


def column(key: str, format_: str = "{:,.0f}"):
    """A table column of a nested value (`a.b`) or a counter (`counters.x`); "-" where there is none."""
    def cell(row: dict) -> str:
        value = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None else fmt_ms(value) if format_ == "ms" else format_.format(value)
    return cell


def ms_pair(*keys: str):
    return lambda row: " / ".join(column(key, "ms")(row) for key in keys)


COMMON = [("workers", lambda r: "replaced" if r["workers_replaced"] else "same"),
          ("RSS MiB before / after", "{rss_before_mib:.0f} / {rss_after_mib:.0f}"),
          ("shed counter", column("counters.shed"))]
OTHERS = ("others' cores", "{cpu[other_cpu_cores]:.2f}")
PROBES = ("503 (probes with Retry-After)", "{shed_503:,} ({probe[shed_with_retry_after]}/{probe[shed]})")
TABLES = {  # title, columns; every row is a case's result with its server's label in "cls"
    "max": ("Unloaded maximum (wrk -t1 -c16, closed loop; then h2load open loop at 90 % of that rate, a connection "
            "per request)", [
                ("worker class", "{cls}"), ("wrk req/s", "{wrk[rps]:,.0f}"),
                ("p50 ms", column("wrk.latency_ms.p50", "ms")), ("p99 ms", column("wrk.latency_ms.p99", "ms")),
                ("errors", "{wrk[error_count]}"),
                ("h2load offered/s", "{h2load_at_90[offered_rps]:,.0f}"),
                ("h2load 2xx/s", "{h2load_at_90[ok_rps]:,.0f}"),
                ("503", "{h2load_at_90[shed_503]:,}"), ("no answer", "{h2load_at_90[no_answer]:,}"),
                ("h2load p99 ms", column("h2load_at_90.ok_ms.p99", "ms")), OTHERS]),
    "slow": (f"Normal traffic (wrk -t1 -c{NORMAL_CONNECTIONS} --timeout {NORMAL_TIMEOUT:g}s, single-instance JSON) "
             "beside slow or idle connections", [
                 ("worker class", "{cls}"), ("beside", lambda r: f"{r['connections']['opened']:,} idle connections"
                                             if "connections" in r else f"{r['slow_connections']} {r['case']}"),
                 ("req/s", "{normal[rps]:,.0f}"), ("p99 ms", column("normal.p99_ms", "ms")),
                 ("wrk errors", lambda r: ", ".join(f"{v} {k}" for k, v in r["normal"]["errors"].items() if v) or "0"),
                 ("probes answered within 2 s", "{normal[probes_ok]}/{normal[probes]}"),
                 ("slow/idle connections cut off", cut_off), ("client timeouts", column("counters.client_timeouts")),
                 COMMON[0], ("RSS MiB before / peak / after", lambda r: " / ".join(
                     column(k, "{:.0f}")(r) for k in ("rss_before_mib", "rss_peak_mib", "rss_after_mib"))), OTHERS]),
    "busy": (f"A busy machine (a Python loop burning a core, the server on every core) and h2load at {BUSY_FACTOR:g}x "
             "the maximum, open loop", [
                 ("server", "{cls}"), ("offered req/s", "{load[offered_rps]:,.0f}"), ("requests", "{load[requests]:,}"),
                 ("2xx within 2 s", "{load[ok]:,}"), ("503", "{load[shed_503]:,}"),
                 ("no answer", "{load[no_answer]:,}"), ("p50 / p99 ms", ms_pair("load.answered_ms.p50",
                                                                                "load.answered_ms.p99")), COMMON[2]]),
    "crowd": (f"Crowds (wrk -t2 -cN --timeout {REQUEST_TIMEOUT}s, closed loop: each client sends its next request as "
              "soon as it has an answer, 503s included)", [
                  ("server", "{cls}"), ("connections", "{connections:,}"), ("requests", "{requests:,}"),
                  ("predictions/s (vs max)", "{predictions_per_s:,.0f} ({vs_max:.0%})"), PROBES,
                  ("socket errors and timeouts", "{socket_errors:,} ({socket_error_share:.2%})"),
                  ("p50 / p99 ms", ms_pair("p50_ms", "p99_ms")), *COMMON, OTHERS]),
    "overload": (f"Overload (h2load: a new connection per request at a factor of the unloaded maximum (wrk's), "
                 f"{REQUEST_TIMEOUT} s timeout each; /healthz polled every {POLL_PERIOD:g} s; * h2load stopped "
                 f"{REQUEST_TIMEOUT + H2LOAD_GRACE} s after its last request was due: its connect()s to a full accept "
                 "queue would go on for minutes). The CPU at the unloaded maximum (wrk) and under overload (h2load)", [
                     ("server", "{cls}"), ("factor", "{factor:g}x"), ("offered req/s", "{load[offered_rps]:,.0f}"),
                     ("requests", lambda r: f"{r['load']['requests']:,}" + " *" * r["load"]["stopped_at_deadline"]),
                     ("2xx within 2 s", lambda r: f"{r['load']['ok']:,}" + (
                         f" (+{r['load']['late_2xx']:,} later)" if r["load"]["late_2xx"] else "")), PROBES,
                     ("no answer (timeout, error, not sent)", "{load[no_answer]:,}"),
                     ("p99 / max ms of answers", ms_pair("load.answered_ms.p99", "load.answered_ms.max")),
                     ("predictions/s (vs max)", "{load[ok_rps]:,.0f} ({vs_max:.0%})"),
                     (f"/healthz 200 within {TARGET_HEALTH_S:g} s", "{healthz[within_target]}/{healthz[polls]} "
                      "(max {healthz[max_s]:.2f} s)"), *COMMON,
                     ("server cores at max / in overload", "{max[server_cores]:.2f} / {server_cores:.2f}"),
                     ("wrk / h2load cores", "{max[wrk_cores]:.2f} / {generator_cores:.2f}"),
                     ("server CPU ms per request at max", "{max[server_cpu_ms_per_request]:.3f}"), OTHERS]),
    "shed": ("What a shed request costs: the server's CPU seconds of every crowd and overload case fitted (least "
             "squares) as predictions x a + shed requests x b; s = b / a", [
                 ("server", "{cls}"), ("a: CPU ms per prediction under load", "{prediction_ms:.3f}"),
                 ("predictions/s per core (1 / a)", "{capacity_per_core:,.0f}"),
                 ("b: CPU ms per shed request", "{shed_ms:.3f}"), ("s", "{s:.3f}"), ("cases", "{cases}")]),
}


def report(args, out: dict, env: dict) -> tuple[str, str]:
    rows = collections.defaultdict(list)
    for cls, r in out["results"].items():
        rows["max"] += [{"cls": cls} | r["max"]] if "max" in r else []
        rows["slow"] += [{"cls": cls, "case": case} | r[case] for case in (*SLOW_CASES, "idle") if case in r]
        rows["busy"] += [{"cls": cls} | r["busy"]] if "busy" in r else []
        rows["crowd"] += [{"cls": cls} | c for c in r.get("crowd", {}).values()]
        rows["overload"] += [{"cls": cls, "max": r["max"]["wrk"]} | o for o in r.get("overload", {}).values()]
        rows["shed"] += [{"cls": cls} | r["shed_cost"]] if "shed_cost" in r else []
    text = [f"\n{title}:\n\n" + table(rows[key], columns) for key, (title, columns) in TABLES.items() if rows[key]]
    if out["verdict"]:
        text.append("\nTargets for the default worker (gevent):\n" + "\n".join(
            f"- {name}: {'met' if ok else 'MISSED'}" for name, ok in out["verdict"].items()))
    pinning = (f"server on CPU {args.server_cpu}, load generators on the other (taskset)"
               if args.server_cpu is not None else "server and load generators sharing the CPUs")
    return (f"bench/service/run hostile: {WORKERS} server workers each (gthread: {GTHREAD_THREADS} threads), "
            f"CLIENT_TIMEOUT {CLIENT_TIMEOUT:g} s, QUEUE_TIMEOUT {DEFAULTS.queue_timeout:g} s, QUEUE_TIMEOUT_MAX "
            f"{DEFAULTS.queue_timeout_max:g} s, BACKLOG {DEFAULTS.backlog} (somaxconn {out['somaxconn']}); {pinning}; "
            f"gunicorn {env['gunicorn']}, gevent {env['gevent']}, {env['wrk']}, {env['h2load']}, {env['slowhttptest']}",
            "\n".join(text))


def judge(r: dict) -> dict[str, bool]:
    verdict = {}
    for case in (c for c in SLOW_CASES if c in r):
        n = r[case]["normal"]
        verdict[f"{case}: 0 errors, p99 < {TARGET_SLOW_P99_MS} ms, workers kept"] = (
            n["error_count"] == 0 and n["probes_ok"] == n["probes"] and n["requests"] > 0
            and n["p99_ms"] < TARGET_SLOW_P99_MS and not r[case]["workers_replaced"])
    if i := r.get("idle"):
        closed = i["connections"]["all_closed_s"]
        verdict[f"idle: 0 errors, all closed within {CLIENT_TIMEOUT + CLOSE_MARGIN:g} s, RSS back within 10 %"] = (
            i["normal"]["error_count"] == 0 and i["normal"]["probes_ok"] == i["normal"]["probes"]
            and closed is not None and closed <= CLIENT_TIMEOUT + CLOSE_MARGIN
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
        if (target := TARGET_OVERLOAD_VS_MAX.get(o["factor"])) is not None:
            verdict[f"overload {key}x: predictions/s >= {target:.0%} of the maximum"] = o["vs_max"] >= target
        load = o["load"]
        verdict[f"overload {key}x: every request answered within {REQUEST_TIMEOUT} s (a prediction or a 503 with "
                f"Retry-After), /healthz all 200 within {TARGET_HEALTH_S:g} s, workers kept, RSS within 10 %"] = (
            load["no_answer"] == 0 and load["answered_ms"]["max"] is not None
            and load["answered_ms"]["max"] <= REQUEST_TIMEOUT * 1000
            and o["healthz"]["within_target"] == o["healthz"]["polls"] > 0
            and not o["workers_replaced"] and o["probe"]["shed_with_retry_after"] == o["probe"]["shed"]
            and o["rss_after_mib"] <= TARGET_RSS_GROWTH * o["rss_before_mib"])
    return verdict


def raise_limits(open_files: int, backlog: int | None) -> int | None:
    """The soft limit on open files (inherited by h2load and wrk) raised towards the hard one; with `backlog`,
    the kernel's cap on listen backlogs (net.core.somaxconn) raised to it as root. Returns that cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if (wanted := hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, open_files))) > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < open_files:
        log(f"hostile: only {wanted} open files allowed (ulimit -n); {open_files} wanted")
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    try:
        if backlog and (cap := int(somaxconn.read_text())) < backlog and os.geteuid() == 0:
            somaxconn.write_text(str(backlog))
            log(f"hostile: net.core.somaxconn {cap} -> {backlog}, the service's BACKLOG")
        cap = int(somaxconn.read_text())
    except (OSError, ValueError):
        return None
    if backlog and cap < backlog:
        log(f"hostile: net.core.somaxconn is {cap}, under the service's BACKLOG {backlog}: crowds larger than "
            "that wait for SYN retransmissions (run as root to raise it)")
    return cap if backlog else None


def numbers(text: str, type_=float) -> list:
    """A comma-separated list of numbers above 0, for argparse."""
    with contextlib.suppress(ValueError):
        if (values := [type_(v) for v in text.split(",") if v.strip()]) and min(values) > 0:
            return values
    raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers above 0, comma-separated")


def run(args, servers: Servers, test, model_dir: Path) -> dict:
    args.server_cpu = pin_self("hostile", args.pin)
    body = sv.single_body(test, servers.workdir)
    results = {cls: measure(servers, cls, model_dir, body, args) for cls in args.classes}
    return {"somaxconn": args.somaxconn, "results": results,
            "verdict": judge(results["gevent"]) if "gevent" in results else {}}


def main() -> int:
    parser = sv.parser("bench/service/run hostile", __doc__)
    add = parser.add_argument
    add("--worker-classes", default=",".join(CLASSES), help=f"comma-separated [{','.join(CLASSES)}]")
    add("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    add("--seconds", type=float, default=30, help="seconds of normal traffic beside slow connections, of each crowd "
        "and of each overload [30]")
    add("--max-seconds", type=float, default=10, help="seconds of wrk for the unloaded maximum [10]")
    add("--calibration-seconds", type=float, default=5, help="seconds of h2load at 90 %% of the maximum [5]")
    add("--idle-seconds", type=float, default=CLIENT_TIMEOUT + CLOSE_MARGIN,
        help=f"seconds of normal traffic beside idle connections [{CLIENT_TIMEOUT + CLOSE_MARGIN:g}]")
    add("--slow-connections", type=int, default=64, help="slow connections [64]")
    add("--idle-connections", type=int, default=1000, help="idle connections [1000]")
    add("--crowds", type=lambda t: numbers(t, int), default=list(CROWDS),
        help=f"closed-loop crowd sizes, comma-separated [{','.join(map(str, CROWDS))}]")
    add("--overload-factors", type=numbers, default=[2.0, 3.0, 5.0],
        help="offered rates / unloaded maximum, comma-separated [2,3,5]")
    add("--rate-period-ms", type=int, default=100, help="h2load opens rate x period connections each period [100]")
    add("--no-pin", dest="pin", action="store_false", help="the server and the load generators share every CPU")
    args = parser.parse_args()
    args.classes = [c for c in args.worker_classes.split(",") if c]
    args.case_list = [c for c in CASES if c in args.cases.split(",")]
    if set(args.classes) - set(CLASSES) or not args.classes:
        parser.error(f"--worker-classes: choose from {','.join(CLASSES)}")
    if set(args.cases.split(",")) - set(CASES) or not args.case_list:
        parser.error(f"--cases: choose from {','.join(CASES)}")
    args.somaxconn = raise_limits(max(args.idle_connections, *args.crowds) + 16 * 1024,
                                  DEFAULTS.backlog if "crowd" in args.case_list else None)
    return sv.main("hostile", args, run, report, (), ("gunicorn", "gevent", "flask"),
                   wrk=(tool_version(["wrk", "--version"]) or "").split(" [")[0],
                   h2load=tool_version(["h2load", "--version"]),
                   slowhttptest=tool_version(["slowhttptest", "-h"], "version"))


if __name__ == "__main__":
    sys.exit(main())
