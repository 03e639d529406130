"""The service under load, as deployed: `mnist-serve` with 2 workers on loopback, versions trained by
the real `mnist-train`, wrk sending a mix of request kinds (wrk_load.py, mixed.lua). Run by
scripts/reliability; what each case checks and the latest figures are in docs/reliability.md. Every
case has a time limit and prints its figures as it goes (they are also summed up at the end)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from reliability_helpers import (
    WORKERS,
    CpuMeter,
    TotalScraper,
    log_entries,
    rss_mb,
    served_by_all_workers,
    train,
)
from wrk_load import Wrk, check_answers, request_mix

from mnist_artifact import format
from mnist_artifact.repository import open_repository, parse_location
from service_helpers import metric_total, wait_for

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def kinds(digits):
    return request_mix(digits)


def record_load(figures, case: str, result, answers: dict[int, int]) -> None:
    figures.add(case, "requests", result.requests)
    figures.add(case, "requests/s", result.rate)
    figures.add(case, "latency p50 / p99 (ms)", f"{result.latency_ms['p50']:.1f} / {result.latency_ms['p99']:.1f}")
    figures.add(case, "errors (non-2xx + socket)", result.errors)
    figures.add(case, "answers checked against their version, per version",
                ", ".join(f"v{v}: {n:,}" for v, n in sorted(answers.items())))


# -- 1. load -------------------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_mixed_load_has_no_errors_and_flat_memory(model_dir, serve, kinds, figures, tmp_path):
    """64 connections for 60 s of single, batch-8, base64-PNG and raw-PNG requests: no error, every
    answer right, and the server's memory (master + workers) grows at most 10 % after warm-up."""
    case = "1 load"
    server = serve(model_dir)
    pid = server.process.pid
    with Wrk(server.url, kinds, tmp_path / "warm-up", connections=64, seconds=5) as warm_up:
        warm_up.wait()
    assert warm_up.result.errors == 0, warm_up.result.failed_bodies

    rss_before = peak = rss_mb(pid)
    meter = CpuMeter().start()
    with Wrk(server.url, kinds, tmp_path / "load", connections=64, seconds=60) as load:
        while load.process.poll() is None:
            peak = max(peak, rss_mb(pid))
            time.sleep(1)
    cpu = meter.stop()
    rss_after = rss_mb(pid)
    result = load.result
    answers = check_answers(result, kinds, model_dir)

    record_load(figures, case, result, answers)
    figures.add(case, "latency max (ms)", result.latency_ms["max"])
    figures.add(case, "RSS after warm-up / at the end / peak (MB)", f"{rss_before:.1f} / {rss_after:.1f} / {peak:.1f}")
    figures.add(case, "RSS growth (%)", 100 * (rss_after / rss_before - 1))
    figures.add(case, "CPU: server + wrk + pytest (cores)", cpu["ours_cores"])
    figures.add(case, "CPU: other processes (cores)", cpu["others_cores"])
    assert result.errors == 0, result.failed_bodies
    assert rss_after <= 1.10 * rss_before


# -- 2. a worker killed ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_worker_killed_under_load_is_replaced(model_dir, serve, kinds, figures, tmp_path):
    """SIGKILL to one worker under load: a new worker answers, only the requests the killed one held
    fail, and the request totals of /metrics never go backwards (the dead worker's counts stay)."""
    case = "2 worker killed"
    server = serve(model_dir)
    master = psutil.Process(server.process.pid)
    with TotalScraper(server.url) as scraper, Wrk(server.url, kinds, tmp_path / "load", connections=16) as load:
        time.sleep(3)
        workers = master.children()
        victim = workers[0]
        victim.suspend()  # SIGSTOP: its connections cannot change while they are counted
        in_flight = sum(1 for c in victim.connections("tcp")
                        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port)
        log_offset = server.log_path.stat().st_size
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()

        def replacement() -> int | None:
            new = [p.pid for p in master.children() if p.pid not in {w.pid for w in workers}]
            return new[0] if new else None

        assert wait_for(lambda: replacement() is not None, timeout=20), "no new worker was started"
        new_pid = replacement()
        needle = f'"pid":{new_pid},'
        assert wait_for(lambda: any(e.get("message") == "request" and e.get("status") == 200
                                    for e in log_entries(server, needle, log_offset)), timeout=30), \
            f"the new worker {new_pid} answered no request"
        serving_after = time.monotonic() - killed
        time.sleep(2)
    result = load.result
    answers = check_answers(result, kinds, model_dir)
    totals = scraper.totals
    failed = result.errors + len(scraper.failures)

    record_load(figures, case, result, answers)
    figures.add(case, "requests in flight in the killed worker", in_flight)
    figures.add(case, "failed requests (wrk + scrapes)", failed)
    figures.add(case, "kill to the new worker's first answer (s)", serving_after)
    figures.add(case, "/metrics scrapes; request total first / last",
                f"{len(totals)}; {totals[0]:,.0f} / {totals[-1]:,.0f}")
    assert failed <= in_flight, (result.failed_bodies, result.socket_errors, scraper.failures)
    assert len(totals) > 20 and all(b >= a for a, b in zip(totals, totals[1:])), totals
    assert totals[-1] >= result.requests - result.errors  # every answered request was counted


# -- 3. hot swap ---------------------------------------------------------------------------------

@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["directory", "s3"])
def test_hot_swap_to_a_freshly_trained_version_under_load(store, model_dir, serve, kinds, mnist_dir, figures,
                                                          request, tmp_path):
    """`mnist-train train` publishes version 2 into the served MODEL_DIR under load: no request fails,
    both versions answer, and every answer is the forward pass of the version it names. The same
    with MODEL_DIR a bucket on a real S3 server (tests/s3_server.py), version 1 copied into it."""
    case = "3 hot swap" if store == "directory" else "3 hot swap, S3"
    if store == "s3":
        bucket = request.getfixturevalue("s3_uri")
        manifest, arrays = format.load(model_dir / "mnist" / "1")
        open_repository(parse_location("MODEL_DIR", bucket)).publish("mnist", arrays, manifest)
        model_dir = bucket
    server = serve(model_dir)
    with Wrk(server.url, kinds, tmp_path / "load", connections=16, seconds=200) as load:
        time.sleep(2)
        started = time.monotonic()
        summary = train(mnist_dir, model_dir, seed=1)
        published = time.monotonic()
        assert summary["version"] == 2
        assert wait_for(lambda: served_by_all_workers(server.url, 2), timeout=30)
        swapped = time.monotonic()
        time.sleep(2)
    result = load.result
    answers = check_answers(result, kinds, model_dir)

    record_load(figures, case, result, answers)
    figures.add(case, "training under load (s)", published - started)
    figures.add(case, "publish to both workers serving v2 (s)", swapped - published)
    assert result.errors == 0, result.failed_bodies
    assert set(answers) == {1, 2}


# -- 4. corrupt versions -------------------------------------------------------------------------

class Canary:
    """Unpickling this creates a directory: proof that a reader ran a pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def publish_broken(model_dir: Path, version: int, corrupt) -> None:
    """Version 1's files as `version`, broken by corrupt(directory), published atomically (a rename)."""
    staging = model_dir / "mnist" / f".publishing-{version}"
    shutil.copytree(model_dir / "mnist" / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    corrupt(staging)
    staging.rename(model_dir / "mnist" / str(version))


def flip_a_weights_byte(directory: Path) -> None:
    data = bytearray((directory / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "weights.npz").write_bytes(bytes(data))


def truncate_the_manifest(directory: Path) -> None:
    text = (directory / "manifest.json").read_text()
    (directory / "manifest.json").write_text(text[: len(text) // 2])


def pickle_the_weights(canary: Path):
    """Weights where W1 is an object array (pickled by np.savez), with the manifest's sha256 of the new
    file: only refusing pickles (np.load(allow_pickle=False)) stops it."""
    def corrupt(directory: Path) -> None:
        import hashlib

        with np.load(directory / "weights.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["W1"] = np.array([Canary(canary), arrays["W1"]], dtype=object)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (directory / "weights.npz").write_bytes(buffer.getvalue())
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["weights"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return corrupt


@pytest.mark.timeout(150)
def test_corrupt_versions_are_refused_under_load(model_dir, serve, kinds, figures, tmp_path):
    """Three broken versions published under load: each is refused by every worker and counted in
    mnist_model_load_failures_total, version 1 keeps answering, no request fails, no pickle runs."""
    case = "4 corrupt versions"
    canary = tmp_path / "pickle-ran"
    broken = {2: ("flipped byte in weights.npz", flip_a_weights_byte, "sha256 does not match"),
              3: ("truncated manifest.json", truncate_the_manifest, "cannot read manifest"),
              4: ("pickled object array in weights.npz", pickle_the_weights(canary), "allow_pickle")}
    server = serve(model_dir)
    with Wrk(server.url, kinds, tmp_path / "load", connections=16, seconds=120) as load:
        time.sleep(2)
        for version, (what, corrupt, reason) in broken.items():
            before = metric_total(server.url, "mnist_model_load_failures_total")
            publish_broken(model_dir, version, corrupt)
            want = before + WORKERS
            counted = wait_for(lambda: metric_total(server.url, "mnist_model_load_failures_total") >= want,  # noqa: B023
                               timeout=20)
            after = metric_total(server.url, "mnist_model_load_failures_total")
            figures.add(case, f"v{version} {what}: load failures counted", int(after - before))
            assert counted, f"version {version} ({what}): not refused by every worker"
            rejections = [e for e in log_entries(server, "rejected model version") if e.get("version") == version]
            assert len(rejections) == WORKERS and all(reason in e["reason"] for e in rejections), rejections
            assert served_by_all_workers(server.url, 1)
        time.sleep(2)
    result = load.result
    answers = check_answers(result, kinds, model_dir)

    record_load(figures, case, result, answers)
    assert result.errors == 0, result.failed_bodies
    assert set(answers) == {1}
    assert not canary.exists(), "a worker unpickled the weights"


# -- 6. slow clients, idle connections, overload ------------------------------------------------

REPO = Path(__file__).resolve().parents[2]  # bench.service.hostile is run from here, as `python -m`


@pytest.mark.timeout(720)
def test_slow_clients_idle_connections_and_overload(trained, figures, tmp_path):
    """bench/service/run hostile's cases against the default worker, with its figures: 64 clients
    trickling headers, trickling bodies, or silent, and 1,000 idle connections, while normal traffic
    runs (0 errors, p99 < 1 s, every slow connection cut off, no worker lost, memory flat); then
    open-loop overloads at 2x and 3x the measured maximum, the server on one core and h2load on the
    other (every request answered within 2 s, a prediction or a 503 with Retry-After; /healthz
    answering 200 within Kubernetes' default probe timeout, 1 s, throughout; workers kept, memory
    flat). The share of predictions and /healthz within 0.5 s are figures here, targets in
    bench/service/run hostile: speed belongs in benchmarks. Broken clients (vanishing mid-request, a
    request line or headers over the limits) are tests/service/test_worker.py's."""
    report = tmp_path / "hostile.json"
    cases = "max,slow-headers,slow-body,slow-silent,idle,overload"
    done = subprocess.run([sys.executable, "-m", "bench.service.hostile", "--worker-classes", "gevent",
                           "--model-dir", str(trained), "--cases", cases, "--overload-factors", "2,3",
                           "--seconds", "20", "--wait-quiet", "0", "--json", str(report)], timeout=680, cwd=REPO)
    assert done.returncode == 0
    results = json.loads(report.read_text())
    r = results["results"]["gevent"]
    figures.add("6 hostile", "unloaded maximum, server on one core (wrk -c16, req/s)", r["max"]["wrk"]["rps"])
    for kind in ("slow-headers", "slow-body", "slow-silent", "idle"):
        normal = r[kind]["normal"]
        figures.add(f"6 {kind}", "normal traffic req/s, p99 ms, errors",
                    f"{normal['rps']:,.0f}, {normal['p99_ms']:.1f}, {normal['error_count']}")
        assert normal["error_count"] == 0 and normal["probes_ok"] == normal["probes"] > 0
        assert normal["p99_ms"] < 1000 and not r[kind]["workers_replaced"]
    for kind in ("slow-headers", "slow-body", "slow-silent"):
        cut = [wave["all_closed_s"] for wave in r[kind]["waves"]]
        figures.add(f"6 {kind}", "seconds until every slow connection of a wave was cut off",
                    ", ".join("never" if c is None else f"{c:.1f}" for c in cut))
        assert all(c is not None for c in cut[:-1]) and cut  # the last wave may still be open at the end
    idle = r["idle"]
    figures.add("6 idle", "1,000 idle connections all closed after (s)", idle["connections"]["all_closed_s"])
    figures.add("6 idle", "RSS MiB before / peak / after",
                f"{idle['rss_before_mib']:.0f} / {idle['rss_peak_mib']:.0f} / {idle['rss_after_mib']:.0f}")
    assert idle["connections"]["all_closed_s"] is not None and idle["rss_after_mib"] <= 1.1 * idle["rss_before_mib"]
    for factor in ("2", "3"):
        overload = r["overload"][factor]
        load, health = overload["load"], overload["healthz"]
        case = f"6 overload {factor}x"
        figures.add(case, "offered req/s, requests", f"{load['offered_rps']:,.0f}, {load['requests']:,}")
        figures.add(case, "2xx / 503 / no answer within 2 s", f"{load['ok']:,} / {load['shed_503']:,} / "
                    f"{load['no_answer']:,}")
        figures.add(case, "predictions/s (share of the maximum)", f"{load['ok_rps']:,.0f} ({overload['vs_max']:.0%})")
        figures.add(case, "/healthz 200 within 0.5 s (slowest s)",
                    f"{health['within_target']}/{health['polls']} ({health['max_s']:.2f})")
        assert load["no_answer"] == 0 and load["answered_ms"]["max"] <= 2000
        assert health["ok"] == health["polls"] > 0 and health["max_s"] <= 1.0
        assert overload["probe"]["shed_with_retry_after"] == overload["probe"]["shed"]
        assert not overload["workers_replaced"]
        assert overload["rss_after_mib"] <= 1.1 * overload["rss_before_mib"]
        assert overload["counters"]["shed"] >= load["shed_503"]  # every 503 h2load saw was counted as shed
    cost = r["shed_cost"]
    figures.add("6 overload", "server CPU ms per prediction / per shed request (fit over 2x and 3x)",
                f"{cost['prediction_ms']:.3f} / {cost['shed_ms']:.3f}")
