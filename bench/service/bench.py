"""HTTP benchmark of mnist-serve against a bare Flask ceiling and MLServer, with wrk (bench/README.md).

Run through bench/service/run, which sets up .venv and .bench-mlserver-venv/ and cleans up after:

    bench/service/run [--duration 20] [--connections 16] [--model-dir DIR] [--json PATH]

One run, on 127.0.0.1 only, loading one server at a time, each with 2 worker processes:

  service          mnist-serve, WORKERS=2, its default worker (gevent)  (single-instance JSON)
  service-sync     mnist-serve, WORKERS=2 WORKER_CLASS=sync                (for comparison)
  service-gthread  mnist-serve, WORKERS=2 WORKER_CLASS=gthread THREADS=4   (for comparison)
  service-keepalive  mnist-serve, default worker, `--keep-alive 2` (only when asked with --cases)
  bare             bench/service/bare_app.py under gunicorn, 2 sync workers
  mlserver         MLServer with bench/service/mlserver_runtime.py, parallel_workers 2 (V2 JSON)
  service-batch    mnist-serve (default worker), 256 instances per request
  service-png      mnist-serve (default worker), one 280x280 PNG (dark ink on white) as base64 in JSON

All servers are started at once and each is checked (HTTP 200, the right digit, the same
probabilities as the artifact's forward pass), warmed up, then loaded by wrk with --connections
connections for --duration seconds in total, split into --rounds slices interleaved with the other
cases (so that a noisy moment on the shared machine hits all cases, not one). Prints a Markdown
table and the verdict against the targets, which are judged on `service` (the default worker; the
other worker classes' ratios are printed beside it); --json PATH writes everything, per round too.
Compare the ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np
from servers import (
    GTHREAD_THREADS,
    REPO,
    SERVICE_VENV,
    WORKERS,
    CpuMeter,
    Servers,
    add_run_arguments,
    ensure_model,
    free_port,
    http,
    run_wrk,
    session,
    start_service,
    tail,
    wait_idle,
    wait_ready,
)

from mnist_artifact import ArtifactError, Model
from mnist_artifact.repository import LocalRepository

sys.path.insert(0, str(REPO / "bench"))
from common import BUSY, environment, load_mnist, log, markdown_table, mnist_path, wait_quiet, write_json

HERE = Path(__file__).resolve().parent
MLSERVER_VENV = REPO / ".bench-mlserver-venv"
BATCH = 256

# The gevent worker's ~0.07 ms a request is the price of surviving slow clients (bench/README.md):
# 0.80x bare, not the sync worker's 0.85x, and no trading that safety for throughput.
TARGET_VS_BARE = 0.80  # service req/s >= 0.80 x the bare ceiling
TARGET_VS_MLSERVER = 2.5  # service req/s >= 2.5 x MLServer
TARGET_P99_MS = 10.0  # service p99 latency


# --- inputs ------------------------------------------------------------------------------------

def canvas_png(digit: np.ndarray) -> bytes:
    """A digit as a phone or browser canvas sends it: dark ink on white, 280x280, RGBA PNG."""
    from PIL import Image

    ink_on_white = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    ink_on_white.convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def write_bodies(test, workdir: Path) -> dict[str, Path]:
    """The request bodies, compact JSON as a client library would send it."""
    digit, batch = test.images[0], test.images[:BATCH]
    png = canvas_png(digit)
    bodies = {
        "single": {"instances": [digit.reshape(784).tolist()]},
        "batch": {"instances": batch.reshape(BATCH, 784).tolist()},
        "png": {"instances": [{"b64": "data:image/png;base64," + base64.b64encode(png).decode()}]},
        "v2": {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32",
                           "data": digit.reshape(784).tolist()}]},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = workdir / f"body-{name}.json"
        paths[name].write_text(json.dumps(body, separators=(",", ":")))
    (workdir / "digit.png").write_bytes(png)
    return paths


# --- servers -----------------------------------------------------------------------------------

def start_bare(servers: Servers, version_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # One BLAS thread per worker, as mnist-serve sets unless told otherwise: the same forward pass.
    env = {"OPENBLAS_NUM_THREADS": "1"} | os.environ | {"BARE_MODEL_PATH": str(version_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [str(SERVICE_VENV / "bin/python"), "-m", "gunicorn", "--chdir", str(HERE), "--workers", str(WORKERS),
            "--worker-class", "sync", "--bind", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm",
            "--no-control-socket", "bare_app:app"]
    proc = servers.start("bare", argv, env)
    url = f"http://127.0.0.1:{port}/v1/predict"
    deadline = time.monotonic() + 60
    while True:  # no health route: ready when it answers a prediction
        if proc.poll() is not None:
            raise RuntimeError(f"bare app exited with {proc.returncode}; log:\n{tail(proc.log_path)}")
        try:
            if http("POST", url, b'{"instances": [[' + b",".join([b"0"] * 784) + b"]]}", timeout=2)[0] == 200:
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare app not ready; log:\n{tail(proc.log_path)}")
        time.sleep(0.2)


def start_mlserver(servers: Servers, version_dir: Path, model_name: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    root = workdir / "mlserver"
    (root / model_name).mkdir(parents=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # Production-like: no access log (debug false), its default metrics on, 2 inference processes.
    settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
                "parallel_workers": WORKERS, "debug": False, "metrics_dir": str(root / ".metrics"),
                "environments_dir": str(root / ".envs")}
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {"name": model_name, "implementation": "mlserver_runtime.MnistRuntime",
                      "parameters": {"uri": str(version_dir), "version": version_dir.name}}
    (root / model_name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = os.environ | {"PYTHONPATH": str(HERE)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = servers.start("mlserver", [str(MLSERVER_VENV / "bin/mlserver"), "start", str(root)], env, cwd=root)
    base = f"http://127.0.0.1:{http_port}/v2/models/{model_name}"
    wait_ready(proc, base + "/ready")
    return proc, base + "/infer"


def check_answer(name: str, url: str, body_path: Path, label: int, v2: bool = False) -> np.ndarray:
    """One request before the load: 200, the right digit; returns the probabilities of instance 0."""
    status, raw = http("POST", url, body_path.read_bytes(), timeout=30)
    if status != 200:
        raise RuntimeError(f"{name}: HTTP {status}: {raw[:300]!r}")
    answer = json.loads(raw)
    if v2:
        outputs = {o["name"]: o for o in answer["outputs"]}
        got, probabilities = outputs["label"]["data"][0], outputs["probabilities"]["data"][:10]
    else:
        got, probabilities = answer["predictions"][0]["label"], answer["predictions"][0]["probabilities"]
    if got != label:
        raise RuntimeError(f"{name}: predicted {got}, the digit is {label}")
    return np.asarray(probabilities, dtype=np.float64)


# --- wrk ---------------------------------------------------------------------------------------

def measure_slice(servers: Servers, proc: subprocess.Popen, url: str, body_path: Path, seconds: float, args) -> dict:
    """One wrk run against one server, with the CPU the server, wrk and everything else used meanwhile."""
    wait_idle(proc.pid)
    meter = CpuMeter(proc.pid)
    result = run_wrk(servers, url, body_path, seconds, args.connections, args.threads)
    cpu = meter.read()
    result |= {"server_cpu_s": cpu["server_cpu_s"], "wrk_cpu_s": cpu["children_cpu_s"],
               "other_cpu_s": cpu["other_cpu_s"]}
    return result


def aggregate(name: str, slices: list[dict], instances: int) -> dict:
    """A case's rounds as one result: medians of the rounds (robust to one slow moment), plus totals."""
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["duration_s"] for s in slices)
    errors = {k: sum(s["errors"][k] for s in slices) for k in slices[0]["errors"]}
    rounds = [{"rps": s["rps"], "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
               "server_cpu_cores": s["server_cpu_s"] / s["duration_s"],
               "server_cpu_ms_per_request": s["server_cpu_s"] * 1000 / max(1, s["requests"]),
               "other_cpu_cores": s["other_cpu_s"] / s["duration_s"]} for s in slices]
    rps = median([r["rps"] for r in rounds])
    return {
        "name": name, "requests": requests, "duration_s": seconds, "rps": rps, "rps_mean": requests / seconds,
        "rps_min": min(r["rps"] for r in rounds), "rps_max": max(r["rps"] for r in rounds),
        "instances_per_request": instances, "instances_per_s": rps * instances,
        "latency_ms": {k: median([s["latency_ms"][k] for s in slices]) for k in slices[0]["latency_ms"]},
        "p99_ms_worst_round": max(r["p99_ms"] for r in rounds),
        "server_cpu_ms_per_request": sum(s["server_cpu_s"] for s in slices) * 1000 / max(1, requests),
        "server_cpu_cores": sum(s["server_cpu_s"] for s in slices) / seconds,
        "wrk_cpu_cores": sum(s["wrk_cpu_s"] for s in slices) / seconds,
        "other_cpu_cores": sum(s["other_cpu_s"] for s in slices) / seconds,
        "errors": errors, "error_count": sum(errors.values()), "rounds": rounds,
    }


def profile(model_dir: Path, model_name: str, body: Path) -> dict:
    log("bench: profiling one single-instance request in-process (profile_request.py) ...")
    done = subprocess.run([str(SERVICE_VENV / "bin/python"), str(HERE / "profile_request.py"), str(model_dir),
                           str(body), "--name", model_name], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# --- report ------------------------------------------------------------------------------------

DEFAULT_WORKER = "mnist-serve, gevent (default)"
DESCRIPTIONS = {
    "service": (DEFAULT_WORKER, "1 instance, JSON"),
    "service-sync": ("mnist-serve, sync", "1 instance, JSON"),
    "service-gthread": (f"mnist-serve, gthread x{GTHREAD_THREADS}", "1 instance, JSON"),
    "service-keepalive": ("mnist-serve, gevent, keep-alive 2 s", "1 instance, JSON"),
    "bare": ("bare Flask + gunicorn, sync", "1 instance, JSON"),
    "mlserver": ("MLServer, parallel_workers 2", "1 instance, V2 JSON"),
    "service-batch": (DEFAULT_WORKER, f"{BATCH} instances, JSON"),
    "service-png": (DEFAULT_WORKER, "1 PNG 280x280, base64"),
}
# The single-instance cases of mnist-serve, one per worker class: the targets are judged on the first.
WORKER_CASES = {"service": "gevent (default)", "service-sync": "sync", "service-gthread": f"gthread x{GTHREAD_THREADS}",
                "service-keepalive": "gevent, keep-alive 2 s"}
# Run unless --cases says otherwise: all but keep-alive, which mnist-serve turns off (gunicorn_config.py).
DEFAULT_CASES = [case for case in DESCRIPTIONS if case != "service-keepalive"]


def _met(ok: bool, judged: bool) -> str:
    """A target's verdict: met/MISSED for the configuration it is judged on, within/outside for the others."""
    return ("met" if ok else "MISSED") if judged else ("within" if ok else "outside")


def report(results: dict[str, dict], prof: dict | None) -> tuple[str, dict]:
    rows = []
    for name, r in results.items():
        server, body = DESCRIPTIONS[name]
        rows.append([server, body, f"{r['rps']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})",
                     f"{r['instances_per_s']:,.0f}",
                     f"{r['latency_ms']['p50']:.2f}", f"{r['latency_ms']['p99']:.2f}", f"{r['p99_ms_worst_round']:.2f}",
                     f"{r['server_cpu_ms_per_request']:.2f}", f"{r['other_cpu_cores']:.2f}", r["error_count"]])
    header = ["server", "request", "req/s (range of rounds)", "instances/s", "p50 ms", "p99 ms", "worst p99 ms",
              "server CPU ms/req", "others' cores", "errors"]
    text = [markdown_table(header, rows)]

    verdict: dict = {}
    lines = []
    for case, label in WORKER_CASES.items():
        service = results.get(case)
        if not service:
            continue
        judged = case == "service"  # the default configuration; the other classes are for comparison
        met = functools.partial(_met, judged=judged)
        entry = {"p99_ms": service["latency_ms"]["p99"], "p99_met": service["latency_ms"]["p99"] <= TARGET_P99_MS}
        parts = []
        if "bare" in results:
            entry["vs_bare"] = service["rps"] / results["bare"]["rps"]
            entry["vs_bare_met"] = entry["vs_bare"] >= TARGET_VS_BARE
            parts.append(f"{entry['vs_bare']:.2f}x bare (target >= {TARGET_VS_BARE}: {met(entry['vs_bare_met'])})")
        if "mlserver" in results:
            entry["vs_mlserver"] = service["rps"] / results["mlserver"]["rps"]
            entry["vs_mlserver_met"] = entry["vs_mlserver"] >= TARGET_VS_MLSERVER
            parts.append(f"{entry['vs_mlserver']:.2f}x MLServer (target >= {TARGET_VS_MLSERVER:g}: "
                         f"{met(entry['vs_mlserver_met'])})")
        parts.append(f"p99 {entry['p99_ms']:.2f} ms (target <= {TARGET_P99_MS:g}: {met(entry['p99_met'])})")
        if case != "service" and "service" in results:
            entry["vs_default"] = service["rps"] / results["service"]["rps"]
            parts.append(f"{entry['vs_default']:.2f}x the default's req/s")
        verdict[case] = entry
        lines.append(f"- mnist-serve {label}: " + ", ".join(parts))
    if lines:
        text.append("\nTargets (single-instance JSON; medians of the rounds of this run), judged on the default "
                    "worker; the other classes for comparison:\n" + "\n".join(lines))
    if prof:
        whole = prof["whole_request_us"]
        rows = [[k, f"{v:.0f}", f"{v / whole['full']:.0%}"] for k, v in prof["costs_us"].items()]
        rows.append(["total (one request, in-process)", f"{whole['full']:.0f}", "100%"])
        text.append("\nWhere one single-instance request's time goes inside mnist-serve (in-process, WSGI call, "
                    "no HTTP server; medians of interleaved rounds):\n\n"
                    + markdown_table(["part", "µs", "share"], rows)
                    + "\n\nShared by every server: " + ", ".join(f"{k} {v:.0f} µs"
                                                                  for k, v in prof["shared_steps_us"].items())
                    + ". The bare app in the same rounds: " + ", ".join(f"{k} {v:.0f} µs"
                                                                        for k, v in prof["bare_app_us"].items()) + ".")
    return "\n".join(text), verdict


def versions() -> dict:
    from importlib.metadata import version

    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return None

    wrk = (out(["wrk", "--version"]) or "").splitlines()
    return environment(
        flask=version("flask"), gunicorn=version("gunicorn"), orjson=version("orjson"),
        prometheus_client=version("prometheus-client"),
        mlserver=out([str(MLSERVER_VENV / "bin/python"), "-c", "import mlserver; print(mlserver.__version__)"]),
        wrk=wrk[0].split(" [")[0] if wrk else None)


def run(args, cases: list[str], servers: Servers) -> tuple[dict[str, dict], dict | None, Model]:
    """Start, check, warm up and measure the servers of `cases`, then profile: (results, profile, model)."""
    workdir = servers.workdir
    data_path = mnist_path(args.data)
    test = load_mnist(data_path).test
    model_dir = ensure_model(args.model_dir, args.model_name, workdir, data_path)
    version_dir = LocalRepository(model_dir).directory(args.model_name)
    reference = Model.load(version_dir)
    label = int(test.labels[0])
    bodies = write_bodies(test, workdir)
    expected = reference.predict_proba(test.images[:1].reshape(1, 784).astype(np.float32))[0]
    log(f"bench: model {version_dir.name} of {args.model_name!r}, layers "
        f"{reference.manifest['architecture']['layer_sizes']}; the digit is a {label}")

    def checked(name, url, body, v2=False, compare=True):
        probabilities = check_answer(name, url, body, label, v2)
        if compare and np.abs(probabilities - expected).max() > 1e-5:
            raise RuntimeError(f"{name}: probabilities differ from the artifact's forward pass")

    # Every server up at once (idle ones cost next to nothing), checked, then loaded in turn.
    targets = {}  # case -> (server process, url, body, instances per request)
    if {"service", "service-batch", "service-png"} & set(cases):
        proc, base = start_service(servers, "service", model_dir, args.model_name)  # its default worker
        url = base + "/v1/predict"
        checked("service", url, bodies["single"])
        checked("service-png", url, bodies["png"], compare=False)  # resampled: a close, not equal, image
        targets |= {"service": (proc, url, bodies["single"], 1),
                    "service-batch": (proc, url, bodies["batch"], BATCH),
                    "service-png": (proc, url, bodies["png"], 1)}
    for case, worker_class, gunicorn_args in (("service-sync", "sync", ()), ("service-gthread", "gthread", ()),
                                              ("service-keepalive", None, ("--keep-alive", "2"))):
        if case in cases:
            proc, base = start_service(servers, case, model_dir, args.model_name, worker_class=worker_class,
                                       gunicorn_args=gunicorn_args)
            url = base + "/v1/predict"
            checked(case, url, bodies["single"])
            targets[case] = (proc, url, bodies["single"], 1)
    if "bare" in cases:
        proc, url = start_bare(servers, version_dir)
        checked("bare", url, bodies["single"])
        targets["bare"] = (proc, url, bodies["single"], 1)
    if "mlserver" in cases:
        proc, url = start_mlserver(servers, version_dir, args.model_name, workdir)
        checked("mlserver", url, bodies["v2"], v2=True)
        targets["mlserver"] = (proc, url, bodies["v2"], 1)
    order = [c for c in DESCRIPTIONS if c in cases]

    if args.warmup > 0:
        log(f"bench: warm-up, {args.warmup:g} s per case")
        for case in order:
            proc, url, body, _ = targets[case]
            run_wrk(servers, url, body, args.warmup, args.connections, args.threads)
            wait_idle(proc.pid)
    # Interleaved rounds: a noisy minute on the shared machine then hits every case, not one.
    slices: dict[str, list[dict]] = {case: [] for case in order}
    seconds = args.duration / args.rounds
    for round_ in range(1, args.rounds + 1):
        for case in order:
            proc, url, body, _ = targets[case]
            s = measure_slice(servers, proc, url, body, seconds, args)
            slices[case].append(s)
            other = s["other_cpu_s"] / s["duration_s"]
            log(f"bench: round {round_}/{args.rounds} {case}: {s['requests'] / s['duration_s']:,.0f} req/s, "
                f"p99 {s['latency_ms']['p99']:.2f} ms, other processes {other:.2f} cores"
                + (" (busy machine: suspect)" if other > BUSY else ""))
    results = {case: aggregate(case, slices[case], targets[case][3]) for case in order}
    servers.stop_all()
    prof = None if args.no_profile else profile(model_dir, args.model_name, bodies["single"])
    return results, prof, reference


# --- main --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per case [20]")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections [16]")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each case's --duration into this many slices, interleaved with the other "
                             "cases [4]")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of unrecorded load per case first [3]")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads [1: the client takes as little as possible of the 2 cores]")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated subset of {','.join(DESCRIPTIONS)} [all but service-keepalive]")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile of one request")
    add_run_arguments(parser)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(DESCRIPTIONS)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    if args.rounds < 1 or args.duration / args.rounds < 1:
        parser.error("--rounds must be >= 1 and leave >= 1 s per slice")
    if (args.duration / args.rounds) % 1 or args.warmup % 1:
        parser.error("--duration / --rounds and --warmup must be whole seconds (wrk takes no fractions), "
                     f"got {args.duration / args.rounds:g} s per slice")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")

    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    with session() as servers:
        try:
            results, prof, reference = run(args, cases, servers)
        except (RuntimeError, OSError, ArtifactError, subprocess.CalledProcessError) as e:
            log(f"bench: failed: {e}")
            return 1

    ordered = {name: results[name] for name in DESCRIPTIONS if name in results}
    table, verdict = report(ordered, prof)
    env = versions()
    print(f"\nbench/service/run: {args.duration:g} s per case in {args.rounds} interleaved rounds, "
          f"{args.connections} connections, "
          f"wrk {args.threads} thread(s), {WORKERS} server workers each; {env['date']}, Python {env['python']}, "
          f"{env['cpus']} CPUs\n")
    print(table)
    write_json(args.json, {
        "environment": env, "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "model": {"layer_sizes": reference.manifest["architecture"]["layer_sizes"], "version": str(reference.version)},
        "results": ordered, "verdict": verdict, "profile": prof})
    return 0


if __name__ == "__main__":
    sys.exit(main())
