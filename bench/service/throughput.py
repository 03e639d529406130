"""HTTP throughput of mnist-serve against a bare Flask ceiling and MLServer, with wrk, in interleaved
rounds: `bench/service/run [--duration 20] [--cases ...]` (bench/README.md, "Service").
"""

from __future__ import annotations

import base64
import functools
import io
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import log, table, tool_version
from bench.service import servers as sv
from mnist_artifact import Model
from mnist_artifact.repository import LocalRepository

BATCH = 256
# The gevent worker's ~0.07 ms a request is the price of surviving slow clients (bench/README.md):
# 0.80x bare, not the sync worker's 0.85x, and no trading that safety for throughput.
TARGET_VS_BARE = 0.80  # service req/s >= 0.80 x the bare ceiling
TARGET_VS_MLSERVER = 2.5  # service req/s >= 2.5 x MLServer
TARGET_P99_MS = 10.0  # service p99 latency

DEFAULT_WORKER = "mnist-serve, gevent (default)"
DESCRIPTIONS = {
    "service": (DEFAULT_WORKER, "1 instance, JSON"),
    "service-sync": ("mnist-serve, sync", "1 instance, JSON"),
    "service-gthread": (f"mnist-serve, gthread x{sv.GTHREAD_THREADS}", "1 instance, JSON"),
    "service-keepalive": ("mnist-serve, gevent, keep-alive 2 s", "1 instance, JSON"),
    "bare": ("bare Flask + gunicorn, sync", "1 instance, JSON"),
    "mlserver": ("MLServer, parallel_workers 2", "1 instance, V2 JSON"),
    "service-batch": (DEFAULT_WORKER, f"{BATCH} instances, JSON"),
    "service-png": (DEFAULT_WORKER, "1 PNG 280x280, base64"),
}
# The single-instance cases of mnist-serve, one per worker class: the targets are judged on the first.
WORKER_CASES = {"service": "gevent (default)", "service-sync": "sync",
                "service-gthread": f"gthread x{sv.GTHREAD_THREADS}", "service-keepalive": "gevent, keep-alive 2 s"}
# Run unless --cases says otherwise: all but keep-alive, which mnist-serve turns off (gunicorn_config.py).
DEFAULT_CASES = [case for case in DESCRIPTIONS if case != "service-keepalive"]


def write_bodies(test, workdir: Path) -> dict[str, Path]:
    """The request bodies, compact JSON as a client library would send it; the PNG is a digit as a phone
    or browser canvas sends it: dark ink on white, 280x280, RGBA."""
    from PIL import Image

    digit = test.images[0]
    buffer = io.BytesIO()
    Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR).convert("RGBA").save(buffer, "PNG")
    bodies = {
        "single": {"instances": [digit.reshape(784).tolist()]},
        "batch": {"instances": test.images[:BATCH].reshape(BATCH, 784).tolist()},
        "png": {"instances": [{"b64": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}]},
        "v2": {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32",
                           "data": digit.reshape(784).tolist()}]},
    }
    paths = {name: workdir / f"body-{name}.json" for name in bodies}
    for name, body in bodies.items():
        paths[name].write_text(json.dumps(body, separators=(",", ":")))
    return paths


def check_answer(name: str, url: str, body_path: Path, label: int, v2: bool = False) -> np.ndarray:
    """One request before the load: 200, the right digit; returns the probabilities of instance 0."""
    status, _, raw = sv.http("POST", url, body_path.read_bytes(), timeout=30)
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


def run(args, servers: sv.Servers, test, model_dir: Path) -> dict:
    """Start, check, warm up and measure the servers of the cases."""
    cases = args.case_list
    version_dir = LocalRepository(model_dir).directory(args.model_name)
    reference = Model.load(version_dir)
    label = int(test.labels[0])
    bodies = write_bodies(test, servers.workdir)
    expected = reference.predict_proba(test.images[:1].reshape(1, 784).astype(np.float32))[0]
    layers = reference.manifest["architecture"]["layer_sizes"]
    log(f"bench: model {version_dir.name} of {args.model_name!r}, layers {layers}; the digit is a {label}")

    def checked(name, url, body, v2=False, compare=True):
        probabilities = check_answer(name, url, body, label, v2)
        if compare and np.abs(probabilities - expected).max() > 1e-5:
            raise RuntimeError(f"{name}: probabilities differ from the artifact's forward pass")

    # Every server up at once (idle ones cost next to nothing), checked, then loaded in turn.
    targets = {}  # case -> (server process, url, body, instances per request)
    if {"service", "service-batch", "service-png"} & set(cases):
        proc, base = sv.start_service(servers, "service", model_dir, args.model_name)  # its default worker
        url = base + "/v1/predict"
        checked("service", url, bodies["single"])
        checked("service-png", url, bodies["png"], compare=False)  # resampled: a close, not equal, image
        targets |= {"service": (proc, url, bodies["single"], 1), "service-batch": (proc, url, bodies["batch"], BATCH),
                    "service-png": (proc, url, bodies["png"], 1)}
    for case, worker_class, gunicorn_args in (("service-sync", "sync", ()), ("service-gthread", "gthread", ()),
                                              ("service-keepalive", None, ("--keep-alive", "2"))):
        if case in cases:
            proc, base = sv.start_service(servers, case, model_dir, args.model_name, worker_class=worker_class,
                                          gunicorn_args=gunicorn_args)
            checked(case, base + "/v1/predict", bodies["single"])
            targets[case] = (proc, base + "/v1/predict", bodies["single"], 1)
    if "bare" in cases:
        proc, url = sv.start_bare(servers, version_dir)
        checked("bare", url, bodies["single"])
        targets["bare"] = (proc, url, bodies["single"], 1)
    if "mlserver" in cases:
        proc, settings = sv.start_mlserver(servers, version_dir, args.model_name)
        checked("mlserver", settings["infer_url"], bodies["v2"], v2=True)
        targets["mlserver"] = (proc, settings["infer_url"], bodies["v2"], 1)
    order = {case: targets[case] for case in DESCRIPTIONS if case in cases}
    slices = sv.interleave("bench", order, args.rounds, args.warmup,
                           lambda t, seconds: sv.run_wrk(servers, t[1], t[2], seconds, args.connections, args.threads),
                           lambda t: sv.measure_wrk(servers, t[0].pid, t[1], t[2], args.duration / args.rounds,
                                                    args.connections, threads=args.threads))
    results = {case: sv.summarize_rounds(slices[case], targets[case][3]) for case in order}
    return {"model": {"layer_sizes": layers, "version": str(reference.version)}, "results": results,
            "verdict": verdict_lines(results)[0]}


def _met(ok: bool, judged: bool) -> str:
    """A target's verdict: met/MISSED for the configuration it is judged on, within/outside for the others."""
    return ("met" if ok else "MISSED") if judged else ("within" if ok else "outside")


def verdict_lines(results: dict[str, dict]) -> tuple[dict, list[str]]:
    verdict, lines = {}, []
    for case, label in WORKER_CASES.items():
        if not (service := results.get(case)):
            continue
        met = functools.partial(_met, judged=case == "service")  # the default; the other classes for comparison
        entry = {"p99_ms": service["p99_ms"], "p99_met": service["p99_ms"] <= TARGET_P99_MS}
        parts = []
        for other, target, name in (("bare", TARGET_VS_BARE, "bare"), ("mlserver", TARGET_VS_MLSERVER, "MLServer")):
            if other in results:
                entry[f"vs_{other}"] = ratio = service["rps"] / results[other]["rps"]
                entry[f"vs_{other}_met"] = ratio >= target
                parts.append(f"{ratio:.2f}x {name} (target >= {target:g}: {met(ratio >= target)})")
        parts.append(f"p99 {entry['p99_ms']:.2f} ms (target <= {TARGET_P99_MS:g}: {met(entry['p99_met'])})")
        if case != "service" and "service" in results:
            entry["vs_default"] = service["rps"] / results["service"]["rps"]
            parts.append(f"{entry['vs_default']:.2f}x the default's req/s")
        verdict[case] = entry
        lines.append(f"- mnist-serve {label}: " + ", ".join(parts))
    return verdict, lines


def report(args, out: dict, env: dict) -> tuple[str, str]:
    results = out["results"]
    rows = [dict(zip(("server", "request"), DESCRIPTIONS[name])) | r for name, r in results.items()]
    text = [table(rows, [*sv.ROUND_COLUMNS, ("errors", "{error_count}")])]
    if lines := verdict_lines(results)[1]:
        text.append("\nTargets (single-instance JSON; medians of the rounds of this run), judged on the default "
                    "worker; the other classes for comparison:\n" + "\n".join(lines))
    heading = (f"bench/service/run: {args.duration:g} s per case in {args.rounds} interleaved rounds, "
               f"{args.connections} connections, wrk {args.threads} thread(s), {sv.WORKERS} server workers each")
    return heading, "\n".join(text)


def main() -> int:
    parser = sv.parser("bench/service/run", __doc__)
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per case [20]")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections [16]")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each case's --duration into this many slices, interleaved with the other cases [4]")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of unrecorded load per case first [3]")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads [1: the client takes as little as possible of the 2 cores]")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated subset of {','.join(DESCRIPTIONS)} [all but service-keepalive]")
    args = parser.parse_args()
    args.case_list = [c for c in args.cases.split(",") if c]
    if unknown := set(args.case_list) - set(DESCRIPTIONS):
        parser.error(f"unknown case(s) {sorted(unknown)}")
    if args.rounds < 1 or args.duration / args.rounds < 1:
        parser.error("--rounds must be >= 1 and leave >= 1 s per slice")
    if (args.duration / args.rounds) % 1 or args.warmup % 1:
        parser.error("--duration / --rounds and --warmup must be whole seconds (wrk takes no fractions), "
                     f"got {args.duration / args.rounds:g} s per slice")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return sv.main("bench", args, run, report, distributions=("flask", "gunicorn", "orjson", "prometheus-client"),
                   mlserver=sv.mlserver_version(), wrk=(tool_version(["wrk", "--version"]) or "").split(" [")[0])


if __name__ == "__main__":
    sys.exit(main())
