"""What mnist-serve's request path costs, route by route: the server CPU per request above what its transport
costs answering a constant (noop.py), and where the time goes (py-spy). The regression guard of the request
path: payload logging, tracing and every later feature show here what they add.
`bench/service/run cost [--seconds 5] [--rounds 3] [--routes ...] [--profile-seconds 8]`. Servers pinned to
the last CPU with one worker each, load generators on the first (bench/README.md, "Cost per request").
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.common import markdown_table, pin_self
from bench.service import servers as sv
from bench.service.grpc_bench import Case, Target, grpc_check, infer_message, rest_body, rest_check, wait_grpc
from bench.service.throughput import canvas_png, check_answer
from mnist_artifact import Model
from mnist_artifact.repository import LocalRepository

CONNECTIONS = 16
ROUTES = {  # key -> the table's name
    "v1-json": "/v1/predict, 1 instance, JSON",
    "v1-png": "/v1/predict, 1 PNG 280x280 (image/png body)",
    "v2-json": "OIP v2 REST, JSON",
    "v2-binary": "OIP v2 REST, binary tensor",
    "grpc-raw": "gRPC ModelInfer, raw_input_contents",
    "grpc-typed": "gRPC ModelInfer, typed contents",
}
# The parts of a request, by the innermost frame of a py-spy stack that names one: (part, file, functions
# or None for all of the file's), first match wins. Frames of the servers' libraries, and of no part,
# are the transport's: the socket reads under werkzeug's get_data, say, are not decoding.
ENCODERS = {"prediction_objects", "encode_response", "output_tensor", "raw_bytes", "_classification", "answer",
            "_answer"}
TRANSPORT = "transport (gunicorn, gevent / grpc.aio, asyncio, protobuf, grpc core; the kernel is not seen)"
PARTS = [
    ("forward pass", "mnist_artifact/model.py", None),
    ("decoding", "mnist_artifact/preprocess.py", None),
    ("encoding", "mnist_service/codecs/", ENCODERS),
    ("encoding", "mnist_service/grpc/codec.py", ENCODERS),
    ("encoding", "mnist_service/http/routes.py", ENCODERS),
    ("encoding", "mnist_service/http/responses.py", ENCODERS),
    ("decoding", "mnist_service/codecs/", None),
    ("decoding", "mnist_service/grpc/codec.py", None),
    ("decoding", "werkzeug/", None),
    ("model pick", "mnist_service/dataplane/inference.py", {"pick_model", "_version", "_labelled", "_draws_canary",
                                                            "check_name", "headers"}),
    ("model pick", "mnist_service/dataplane/store.py", None),
    ("forward pass", "mnist_service/dataplane/inference.py", None),
    ("decoding", "mnist_service/dataplane/options.py", None),
    ("model pick", "mnist_service/http/routes.py", {"_pick"}),
    ("metrics", "prometheus_client/", None),
    ("metrics", "mnist_service/metrics.py", None),
    ("request id and access line", "mnist_service/access.py", None),
    ("admission", "mnist_service/admission.py", None),
    ("admission", "mnist_service/grpc/lag.py", None),
    ("admission", "mnist_service/process/shedding.py", None),
]
LIBRARIES = ("gunicorn/", "gevent/", "asyncio/", "grpc/", "threading.py")  # the transport's (py-spy's paths)
HANDLING = "the rest of mnist-serve (middleware, routing, servicer)"
# Leaves where a thread waits (py-spy's idle detection misses some under --nonblocking): not work, left out.
WAITS = ("Condition.wait", "Event.wait", "EpollSelector.select", "BaseSelector.select", "select", "sleep")


def part_of(frame: str) -> str | None:
    """The part of a request a py-spy frame ("function (file:line)") is, if any."""
    function, _, where = frame.partition(" (")
    function = function.rpartition(".")[2]  # Class.method -> method
    if where.startswith(LIBRARIES):
        return TRANSPORT
    for part, file, functions in PARTS:
        if file in where and (functions is None or function in functions):
            return part
    if "mnist_service/" in where and "mnist_service/process/" not in where and function not in ("main", "serve",
                                                                                                 "<module>"):
        return HANDLING
    return None


def shares(raw: str) -> dict:
    """py-spy's collapsed stacks ("frame;frame;... count"): the share of busy samples of each part (by the
    innermost frame that names one), and the top leaf frames."""
    parts, leaves, waiting = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].partition(" (")[0] in WAITS:
            waiting += int(count)
            continue
        leaves[frames[-1]] += int(count)
        parts[next((p for p in map(part_of, reversed(frames)) if p), TRANSPORT)] += int(count)
    total = sum(parts.values()) or 1
    return {"samples": sum(parts.values()), "waiting_samples_left_out": waiting,
            "shares": {k: v / total for k, v in parts.most_common()},
            "top_leaves": [[frame, n / total] for frame, n in leaves.most_common(8)]}


def build_cases(servers: sv.Servers, args, model_dir: Path, version_dir: Path, test) -> dict[str, tuple[Case, Case]]:
    """For each route: (mnist-serve's case, the no-op's case with the same request)."""
    images = test.images[:1].reshape(1, 784).astype(np.float32)
    unit, digit = images / np.float32(255), test.images[0]
    expected = Model.load(version_dir).predict_proba(images)
    grpc_port = sv.free_port()
    proc, base = sv.start_service(servers, "service", model_dir, args.model_name, cpus=args.server_cpu, WORKERS="1",
                                  GRPC_PORT=str(grpc_port))
    ours = Target("mnist-serve", proc, grpc_port, base)
    wait_grpc(ours)
    proc, noop_url = sv.start_noop_http(servers, args.server_cpu)
    noop_http = Target("noop", proc, 0, noop_url.removesuffix("/v1/predict"))
    proc, port = sv.start_noop_grpc(servers, args.server_cpu)
    wait_grpc(noop_grpc := Target("noop", proc, port))
    v1_url, v2_url = "/v1/predict", f"/v2/models/{args.model_name}/infer"
    bodies = {"v1-json": (json.dumps({"instances": [digit.reshape(784).tolist()]}).encode(),
                          {"Content-Type": "application/json"}, v1_url),
              "v1-png": (canvas_png(digit), {"Content-Type": "image/png"}, v1_url),
              "v2-json": (*rest_body(unit, binary=False), v2_url),
              "v2-binary": (*rest_body(unit, binary=True), v2_url)}
    cases = {}
    for route in args.route_list:
        pair = []
        for target in (ours, noop_grpc if route.startswith("grpc") else noop_http):
            key = f"{'noop' if target.label == 'noop' else 'ours'}-{route}"
            if route.startswith("grpc"):
                message = infer_message(args.model_name, unit, typed=route == "grpc-typed")
                (path := servers.workdir / f"body-{key}.grpc").write_bytes(b"\0" + struct.pack(">I", len(message))
                                                                           + message)
                pair.append(Case(key, route, target, target.label, ROUTES[route], 1, path, functools.partial(
                    grpc_check, key, target.grpc_port, message, expected if target is ours else None), CONNECTIONS))
                continue
            body, headers, path_ = bodies[route]
            url = target.http_base + (path_ if target is ours else "/v1/predict")
            (path := servers.workdir / f"body-{key}.bin").write_bytes(body)

            v2 = route.startswith("v2") and target is ours

            def check(k=key, u=url, b=body, h=headers, v2=v2) -> int:
                if v2:
                    return rest_check(k, u, b, h, expected)
                check_answer(k, u, b, int(test.labels[0]), h)  # the no-op answers its constant, a 7, to anything
                return 0

            pair.append(Case(key, route, target, target.label, ROUTES[route], 1, path, check, CONNECTIONS, url=url,
                             headers=headers))
        cases[route] = tuple(pair)
    for pair in cases.values():
        for case in pair:
            case.check()
    return cases


def profile(servers: sv.Servers, case: Case, seconds: float) -> dict:
    """py-spy on the process that answers `case` (the gRPC server, or the gunicorn worker) under its load."""
    pgid = case.target.proc.pid
    pids = sv.group_running(pgid, "mnist_service.grpc.server") if not case.url else [
        pid for pid in sv.group_running(pgid, "gunicorn") if psutil_parent_is_gunicorn(pid)]
    if not pids:
        return {"skipped": "process not found"}
    output = servers.workdir / f"py-spy-{case.key}.txt"
    sv.wait_idle(pgid)
    spy = servers.start(f"py-spy-{case.key}", [shutil.which("py-spy") or str(sv.SERVICE_VENV / "bin/py-spy"),
                                               "record", "--pid", str(pids[0]), "--duration", f"{seconds + 2:g}",
                                               "--rate", "250", "--nonblocking", "--format", "raw", "--output",
                                               str(output)], dict(os.environ))
    time.sleep(1)  # attached
    case.load(servers, seconds)
    spy.wait(timeout=seconds + 30)
    servers.running.pop(f"py-spy-{case.key}", None)
    if not output.exists():
        return {"skipped": f"py-spy wrote nothing: {sv.tail(spy.log_path, 5)}"}
    return shares(output.read_text())


def psutil_parent_is_gunicorn(pid: int) -> bool:
    """Whether `pid` is a gunicorn worker (its parent is gunicorn too), not the arbiter."""
    import psutil

    try:
        return "gunicorn" in " ".join(psutil.Process(pid).parent().cmdline())
    except psutil.Error:
        return False


def run(args, servers: sv.Servers, test, model_dir: Path) -> dict:
    version_dir = LocalRepository(model_dir).directory(args.model_name)
    factor_before = common.yardstick(args.data, args.factor_runs) if args.factor_runs else None
    args.server_cpu = pin_self("cost")
    cases = build_cases(servers, args, model_dir, version_dir, test)
    flat = {case.key: case for pair in cases.values() for case in pair}
    slices = sv.interleave("cost", flat, args.rounds, args.warmup, lambda c, seconds: c.load(servers, seconds),
                           lambda c: c.measure(servers, args.seconds))
    profiles = {route: profile(servers, pair[0], args.profile_seconds) for route, pair in cases.items()} \
        if args.profile_seconds else {}
    servers.stop_all()
    factor = None
    if factor_before is not None:
        common.unpin_self()
        factor = common.machine_factor(factor_before, common.yardstick(args.data, args.factor_runs))
    results = {}
    for route, (ours, noop) in cases.items():
        us = {c.key: statistics.median(s["server_cpu_s"] * 1e6 / max(1, s["requests"]) for s in slices[c.key])
              for c in (ours, noop)}
        rps = {c.key: statistics.median(s["rps"] for s in slices[c.key]) for c in (ours, noop)}
        own = us[ours.key] - us[noop.key]
        results[route] = {"ours_cpu_us": us[ours.key], "noop_cpu_us": us[noop.key], "own_cpu_us": own,
                          "own_cpu_us_reference": own / factor["factor"] if factor else None,
                          "ours_rps": rps[ours.key], "noop_rps": rps[noop.key],
                          "vs_noop": rps[ours.key] / rps[noop.key], "profile": profiles.get(route),
                          "errors": sum(sum(s["errors"].values()) for c in (ours, noop) for s in slices[c.key]),
                          "checks_ok": all(s.get("checks_ok", True) for c in (ours, noop) for s in slices[c.key])}
    return {"results": results, "machine_factor": factor, "server_cpu": args.server_cpu}


def report(args, out: dict, env: dict) -> tuple[str, str]:
    results, factor, text = out["results"], out["machine_factor"], []
    if factor:
        text.append(common.describe_factor(factor) + " (runs before and after the servers).\n")
    reference = "own µs, reference machine" if factor else "own µs"
    rows = [[ROUTES[route], f"{r['ours_cpu_us']:.0f}", f"{r['noop_cpu_us']:.0f}", f"{r['own_cpu_us']:.0f}",
             f"**{r['own_cpu_us_reference']:.0f}**" if factor else "-", f"{r['ours_rps']:,.0f} / {r['noop_rps']:,.0f}",
             f"{r['vs_noop']:.2f}x", str(r["errors"]) + ("" if r["checks_ok"] else " CHECK FAILED")]
            for route, r in results.items()]
    text.append("Server CPU per request (medians of the rounds), pinned, one worker, 16 connections:\n\n"
                + markdown_table(["route", "mnist-serve µs", "transport no-op µs", "own µs (the difference)", reference,
                                  "req/s, mnist-serve / no-op", "ratio", "errors"], rows))
    for route, r in results.items():
        p = r["profile"]
        if not p:
            continue
        if "shares" not in p:
            text.append(f"\npy-spy, {ROUTES[route]}: {p['skipped']}")
            continue
        rows = [[part, f"{share:.0%}", f"{share * r['ours_cpu_us']:.0f}"] for part, share in p["shares"].items()]
        text.append(f"\nWhere the time goes, {ROUTES[route]} (py-spy, {p['samples']:,} samples of the answering "
                    f"process; µs: the share of its {r['ours_cpu_us']:.0f} µs of server CPU per request):\n\n"
                    + markdown_table(["part", "share", "µs/request"], rows))
    heading = (f"bench/service/run cost: {args.rounds} interleaved rounds of {args.seconds} s per case, servers on "
               f"CPU {out['server_cpu']}; commit {env['commit']}")
    return heading, "\n".join(text)


def main() -> int:
    parser = sv.parser("bench/service/run cost", __doc__)
    sv.add_round_options(parser, rounds=3, warmup=2)
    parser.add_argument("--profile-seconds", type=int, default=8, help="py-spy: seconds of load per route; 0: none [8]")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated subset of {','.join(ROUTES)}")
    args = parser.parse_args()
    args.route_list = sv.subset(parser, args.routes, ROUTES, "route(s)")
    sv.check_rounds(parser, args)
    if args.profile_seconds < 0:
        parser.error("--profile-seconds must be >= 0")
    return sv.main("cost", args, run, report, distributions=("gunicorn", "gevent", "grpcio", "prometheus-client"),
                   commit=sv.git("rev-parse", "--short", "HEAD"))


if __name__ == "__main__":
    sys.exit(main())
