"""HTTP throughput of mnist-serve against its peers, per core and as deployed, with wrk in interleaved rounds:
`bench/service/run [--seconds 5] [--rounds 4] [--cases ...]` (bench/README.md, "Service").

Per core: each server alone on the last CPU with one worker (MLServer: one process), wrk on the first:
mnist-serve, its own transport answering a constant (noop.py: the ceiling of any path on it), bare Flask
at its best (gunicorn's gevent worker, keep-alive) and MLServer at its best for this model
(parallel_workers 0). As deployed: every process on every CPU, each server as people run it here
(mnist-serve's defaults, MLServer's default and parallel_workers = cores).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import common
from bench.common import EVERY_CPU, log, table, tool_version
from bench.service import servers as sv
from mnist_artifact import Model
from mnist_artifact.repository import LocalRepository

BATCH = 256
TARGET_VS_NOOP = 0.80  # per core: req/s >= 0.80 x the transport's no-op ceiling
TARGET_VS_MLSERVER = 1.5  # per core: req/s >= 1.5 x MLServer's best (its v2 JSON)
TARGET_VS_BARE = 0.80  # per core: /v1/predict req/s >= 0.80 x bare Flask's
TARGET_P99_MS = 10.0  # per core, on the reference machine


@dataclass(frozen=True)
class Case:
    server: str  # a key of SERVERS
    request: str  # what the table says of the request
    body: str  # a key of write_bodies()
    path: str = "/v1/predict"  # on the server's base URL; MLServer's and the no-op's own URL when ""
    images: int = 1


V2 = "/v2/models/{model}/infer"
SERVERS = {  # key -> the table's name; pinned unless "deployed" (below)
    "service": "mnist-serve, 1 worker",
    "noop": "its transport, answering a constant (noop.py)",
    "bare": "bare Flask, 1 gevent worker, keep-alive",
    "mlserver": "MLServer, parallel_workers 0 (its best)",
    "deployed": f"mnist-serve, its defaults ({os.cpu_count()} workers)",
    "deployed-bare": f"bare Flask, {os.cpu_count()} gevent workers",
    "deployed-mlserver": "MLServer, its default (parallel_workers 1)",
    "deployed-mlserver-cores": f"MLServer, parallel_workers {os.cpu_count()}",
}
PINNED = ("service", "noop", "bare", "mlserver")
CASES = {
    "service": Case("service", "1 instance, JSON", "single"),
    "service-v2": Case("service", "OIP v2, 1 image, JSON", "v2", V2),
    "noop": Case("noop", "1 instance, JSON", "single", ""),
    "noop-v2": Case("noop", "OIP v2, 1 image, JSON", "v2", ""),
    "bare": Case("bare", "1 instance, JSON", "single", ""),
    "mlserver": Case("mlserver", "OIP v2, 1 image, JSON", "v2", ""),
    "deployed": Case("deployed", "1 instance, JSON", "single"),
    "deployed-v2": Case("deployed", "OIP v2, 1 image, JSON", "v2", V2),
    "deployed-png": Case("deployed", "1 PNG 280x280, base64", "png"),
    "deployed-batch": Case("deployed", f"{BATCH} instances, JSON", "batch", images=BATCH),
    "deployed-bare": Case("deployed-bare", "1 instance, JSON", "single", ""),
    "deployed-mlserver": Case("deployed-mlserver", "OIP v2, 1 image, JSON", "v2", ""),
    "deployed-mlserver-cores": Case("deployed-mlserver-cores", "OIP v2, 1 image, JSON", "v2", ""),
}
# The targets, per core: (ours, against, target).
RATIOS = [("service", "noop", TARGET_VS_NOOP), ("service-v2", "noop-v2", TARGET_VS_NOOP),
          ("service", "mlserver", TARGET_VS_MLSERVER), ("service-v2", "mlserver", TARGET_VS_MLSERVER),
          ("service", "bare", TARGET_VS_BARE)]


def write_bodies(test, workdir: Path) -> dict[str, Path]:
    """The request bodies, compact JSON as a client library would send it (the PNG: canvas_png's, in
    base64). The v2 body is what both mnist-serve
    and MLServer (mlserver_runtime.py) are sent: FP32 in [0, 1]."""
    digit = test.images[0]
    bodies = {
        "single": {"instances": [digit.reshape(784).tolist()]},
        "batch": {"instances": test.images[:BATCH].reshape(BATCH, 784).tolist()},
        "png": {"instances": [{"b64": "data:image/png;base64," + base64.b64encode(canvas_png(digit)).decode()}]},
        "v2": {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32",
                           "data": (digit.reshape(784).astype(np.float32) / 255).tolist()}]},
    }
    paths = {name: workdir / f"body-{name}.json" for name in bodies}
    for name, body in bodies.items():
        paths[name].write_text(json.dumps(body, separators=(",", ":")))
    return paths


def canvas_png(digit: np.ndarray) -> bytes:
    """An MNIST digit as a phone or browser canvas sends it: dark ink on white, 280x280, RGBA, PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR).convert("RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def check_answer(name: str, url: str, body: bytes, label: int, headers: dict | None = None) -> np.ndarray:
    """One request before the load: 200, the right digit; returns the probabilities of instance 0."""
    status, _, raw = sv.http("POST", url, body, headers, timeout=30)
    if status != 200:
        raise RuntimeError(f"{name}: HTTP {status}: {raw[:300]!r}")
    answer = json.loads(raw)
    if "outputs" in answer:
        outputs = {o["name"]: o for o in answer["outputs"]}
        labels = outputs.get("labels") or outputs["label"]  # mnist-serve's name, MLServer runtime's
        got, probabilities = labels["data"][0], outputs["probabilities"]["data"][:10]
    else:
        got, probabilities = answer["predictions"][0]["label"], answer["predictions"][0]["probabilities"]
    if got != label:
        raise RuntimeError(f"{name}: predicted {got}, the digit is {label}")
    return np.asarray(probabilities, dtype=np.float64)


def start(servers: sv.Servers, key: str, cpu: int | None, model_dir: Path, version_dir: Path, model_name: str):
    """The server `key` of SERVERS, on `cpu` if pinned, else on every CPU (this process is pinned to
    another by then): (process, base URL, or the URL to POST to)."""
    cpus = cpu if key in PINNED else EVERY_CPU
    if key in ("service", "deployed"):
        return sv.start_service(servers, key, model_dir, model_name, cpus=cpus,
                                **({"WORKERS": "1"} if key == "service" else {"WORKERS": str(os.cpu_count())}))
    if key == "noop":
        return sv.start_noop_http(servers, cpus)
    if key in ("bare", "deployed-bare"):
        return sv.start_bare(servers, version_dir, key, 1 if key == "bare" else os.cpu_count(), cpus)
    workers = {"mlserver": 0, "deployed-mlserver": None, "deployed-mlserver-cores": os.cpu_count()}[key]
    proc, settings = sv.start_mlserver(servers, version_dir, model_name, cpus, workers, key)
    return proc, settings["infer_url"]


def run(args, servers: sv.Servers, test, model_dir: Path) -> dict:
    """Start, check, warm up and measure the servers of the cases, between two measures of the machine."""
    version_dir = LocalRepository(model_dir).directory(args.model_name)
    reference = Model.load(version_dir)
    label = int(test.labels[0])
    bodies = write_bodies(test, servers.workdir)
    expected = reference.predict_proba(test.images[:1].reshape(1, 784).astype(np.float32))[0]
    layers = reference.manifest["architecture"]["layer_sizes"]
    log(f"bench: model {version_dir.name} of {args.model_name!r}, layers {layers}; the digit is a {label}")
    factor_before = common.yardstick(args.data, args.factor_runs) if args.factor_runs else None
    cpu = common.pin_self("bench")
    started, targets = {}, {}  # server -> (process, base URL); case -> (process, url, body, wrk's CPUs)
    for key, case in ((k, CASES[k]) for k in args.case_list):
        if case.server not in started:
            log(f"bench: starting {SERVERS[case.server]} ...")
            started[case.server] = start(servers, case.server, cpu, model_dir, version_dir, args.model_name)
        proc, base = started[case.server]
        url = base + case.path.format(model=args.model_name)
        probabilities = check_answer(key, url, bodies[case.body].read_bytes(), label)
        if case.body in ("single", "v2") and np.abs(probabilities - expected).max() > 1e-5 and case.server != "noop":
            raise RuntimeError(f"{key}: probabilities differ from the artifact's forward pass")
        targets[key] = (proc, url, bodies[case.body], None if case.server in PINNED else EVERY_CPU)

    def load(target, seconds):
        return sv.run_wrk(servers, target[1], target[2], seconds, args.connections, cpus=target[3])

    slices = sv.interleave("bench", targets, args.rounds, args.warmup, load,
                           lambda t: sv.measure_wrk(servers, t[0].pid, t[1], t[2], args.seconds, args.connections,
                                                    cpus=t[3]))
    servers.stop_all()
    factor = None
    if factor_before is not None:
        common.unpin_self()
        factor = common.machine_factor(factor_before, common.yardstick(args.data, args.factor_runs))
    results = {key: sv.summarize_rounds(slices[key], CASES[key].images) for key in targets}
    out = {"model": {"layer_sizes": layers, "version": str(reference.version)}, "results": results,
           "machine_factor": factor, "server_cpu": cpu}
    return out | {"verdict": verdicts(out)[0]}


def verdicts(out: dict) -> tuple[dict, list[str]]:
    """The targets judged on this run's per-core cases: (verdict, lines)."""
    results, factor, verdict, lines = out["results"], out["machine_factor"], {}, []
    for ours, other, target in RATIOS:
        if ours in results and other in results:
            ratio = verdict[f"{ours}_vs_{other}"] = results[ours]["rps"] / results[other]["rps"]
            lines.append(f"- {ours} / {other} req/s: **{ratio:.2f}x** (target >= {target:g}: "
                         f"{'met' if ratio >= target else 'MISSED'})")
    for ours in ("service", "service-v2"):
        if ours in results and factor:
            p99 = verdict[f"{ours}_p99_ms_reference"] = results[ours]["p99_ms"] / factor["factor"]
            lines.append(f"- {ours} p99: {results[ours]['p99_ms']:.2f} ms here, **{p99:.2f} ms** on the reference "
                         f"machine (target <= {TARGET_P99_MS:g}: {'met' if p99 <= TARGET_P99_MS else 'MISSED'})")
    if "deployed" in results and "deployed-mlserver-cores" in results:
        verdict["deployed_vs_mlserver_cores"] = ratio = (results["deployed-v2"]["rps"] if "deployed-v2" in results
                                                         else results["deployed"]["rps"]) / results[
            "deployed-mlserver-cores"]["rps"]
        lines.append(f"- as deployed, mnist-serve / MLServer parallel_workers {os.cpu_count()} req/s: {ratio:.2f}x "
                     "(reported, no target)")
    return verdict, lines


def report(args, out: dict, env: dict) -> tuple[str, str]:
    results, factor, text = out["results"], out["machine_factor"], []
    if factor:
        text.append(common.describe_factor(factor) + " (runs before and after the servers).\n")
    columns = [*sv.ROUND_COLUMNS, ("errors", "{error_count}")]
    for title, keys in (("Per core: each server alone on CPU {cpu}, wrk on the other", PINNED),
                        ("As deployed: every process on every CPU", None)):
        rows = [{"server": SERVERS[CASES[k].server], "request": CASES[k].request} | r for k, r in results.items()
                if (CASES[k].server in PINNED) == (keys is not None)]
        if rows:
            text.append(f"\n{title.format(cpu=out['server_cpu'])}:\n\n" + table(rows, columns))
    text.append("\nTargets (medians of the rounds of this run):\n" + "\n".join(verdicts(out)[1]))
    heading = (f"bench/service/run: {args.rounds} interleaved rounds of {args.seconds} s per case, "
               f"{args.connections} connections, wrk {args.threads} thread(s); commit {env['commit']}")
    return heading, "\n".join(text)


def main() -> int:
    parser = sv.parser("bench/service/run", __doc__)
    sv.add_round_options(parser, rounds=4, warmup=3)
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections [16]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)} [all]")
    args = parser.parse_args()
    args.case_list = sv.subset(parser, args.cases, CASES)
    sv.check_rounds(parser, args)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return sv.main("bench", args, run, report, distributions=("flask", "gunicorn", "gevent", "orjson"),
                   mlserver=sv.mlserver_version(), wrk=(tool_version(["wrk", "--version"]) or "").split(" [")[0],
                   commit=sv.git("rev-parse", "--short", "HEAD"))


if __name__ == "__main__":
    sys.exit(main())
