"""What the model sees, and what it costs: payload logging and drift statistics (bench/README.md,
"Payload logging and drift"): `bench/service/run payload [--cases live,faults,drift,factor]`.

live:   /v1/predict (wrk) and ModelInfer (h2load) per core, every request logged to a live sink (nginx
        answering 202 on the load generator's CPU) against the same server without logging, in rounds.
faults: a sink that is down and one that answers after 5 s, under the same load for --fault-seconds:
        req/s, p99, failed requests, the server's RSS over time and every event's outcome, against
        logging off; sent + failed + dropped + sampled_out + skipped + held = requests x 2.
drift:  a real model (its reference profile written by mnist-train) behind mnist-serve's defaults: the
        official test set in random order, then traffic of each shifted kind, each after the windows
        were refilled with the test set; how many requests each took to raise an alarm.
Pinned servers on the last CPU, load generators and sinks on the first.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageFilter

from bench import common
from bench.common import log, machine_factor, pin_self, table, yardstick
from bench.service import servers as sv
from bench.service.grpc_bench import METHOD, STREAMS, Case, grpc_check, infer_message, start_ours
from bench.service.servers import Servers
from mnist_artifact import Model
from mnist_artifact.profile import SIGNALS
from mnist_artifact.repository import LocalRepository

GROUPS = ("live", "faults", "drift", "factor")
TARGET_LIVE = 0.90  # req/s with every request logged to a live sink >= 0.90 x without
ALARM = 0.25  # docker/prometheus-rules.yml, MnistInputDrift
SLOW_SINK_SECONDS = 5.0
DRIFT_CAP = 5000  # requests of a shifted kind sent at most, waiting for the alarm
OUTCOMES = ("sent", "failed", "dropped", "sampled_out", "skipped")
ROUTES = ("/v1/predict", METHOD)  # every inference request these benchmarks send


def start_nginx_sink(servers: Servers) -> str:
    """nginx answering 202 to every POST, keep-alive without limit: a sink that accepts and discards."""
    root = servers.workdir / "nginx"
    root.mkdir()
    port = sv.free_port()
    (conf := root / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  client_body_buffer_size 4m;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{port}; location / {{ return 202; }} location = /ready {{ return 200; }} }}
}}
""")
    proc = servers.start("nginx-sink", ["nginx", "-c", str(conf), "-p", str(root)], dict(os.environ))
    sv.wait_ready(proc, f"http://127.0.0.1:{port}/ready")
    return f"http://127.0.0.1:{port}/events"


def start_slow_sink() -> str:
    """A sink that reads each request and answers 202 after SLOW_SINK_SECONDS (in a thread of this process)."""
    ready, where = threading.Event(), {}

    def reply(writer: asyncio.StreamWriter) -> None:
        if not writer.is_closing():  # the client gave up waiting (PAYLOAD_LOG_TIMEOUT) and closed
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                asyncio.get_running_loop().call_later(SLOW_SINK_SECONDS, reply, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        where["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{where['port']}/events"


def dead_sink() -> str:
    """Where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{sv.free_port()}/events"


def v1_check(url: str, body: bytes, expected: np.ndarray):
    def check() -> int:
        status, _, raw = sv.http("POST", url, body, {"Content-Type": "application/json"}, timeout=30)
        if status != 200 or json.loads(raw)["predictions"][0]["label"] != int(expected[0].argmax()):
            raise RuntimeError(f"/v1/predict answered {status}: {raw[:200]!r}")
        return len(raw)
    return check


def build_cases(servers: Servers, args, model_dir: Path, test, expected: np.ndarray,
                variants: dict[str, dict[str, str]]) -> dict[str, Case]:
    """One pinned mnist-serve (1 HTTP worker, 1 gRPC process) per variant (its settings); a REST and a
    gRPC case each."""
    body_path = sv.single_body(test, servers.workdir)
    unit = test.images[:1].reshape(1, 784).astype(np.float32) / np.float32(255)
    message = infer_message(args.model_name, unit)
    (grpc_body := servers.workdir / "body.grpc").write_bytes(b"\0" + struct.pack(">I", len(message)) + message)
    cases = {}
    for name, settings in variants.items():
        log(f"payload: starting mnist-serve ({name}) with {settings or 'its defaults'} ...")
        target = start_ours(servers, name, f"mnist-serve, {name}", model_dir, args, **settings)
        rest = f"{target.http_base}/v1/predict"
        cases[f"rest-{name}"] = Case(f"rest-{name}", "rest", target, name, "/v1/predict, 1 instance, JSON", 1,
                                     body_path, v1_check(rest, body_path.read_bytes(), expected), url=rest,
                                     headers={"Content-Type": "application/json"})
        cases[f"grpc-{name}"] = Case(f"grpc-{name}", "grpc", target, name, f"ModelInfer, 1 image, {STREAMS} streams",
                                     1, grpc_body, lambda port=target.grpc_port: grpc_check("payload", port, message,
                                                                                            expected))
    for case in cases.values():
        case.check()
    return cases


def event_outcomes(base: str) -> dict[str, float]:
    samples = sv.scrape(base)
    counted = {outcome: sum(sv.totals(samples, "mnist_payload_events_total", outcome=outcome).values())
               for outcome in OUTCOMES}
    inference = sum(sv.totals(samples, "mnist_http_requests_total", route=route).get("", 0) for route in ROUTES)
    return counted | {"held": sum(sv.totals(samples, "mnist_payload_queue_events").values()), "requests": inference}


def live_phase(servers: Servers, args, cases: dict[str, Case]) -> dict:
    live = {key: case for key, case in cases.items() if key.endswith(("-off", "-live", "-nodrift"))}
    slices = sv.interleave("payload", live, args.rounds, args.warmup,
                           lambda c, seconds: c.load(servers, seconds), lambda c: c.measure(servers, args.seconds))
    results = {key: case.summary(slices[key]) for key, case in live.items()}
    events = event_outcomes(cases["rest-live"].target.http_base)
    return {"results": results, "events": events,
            "ratios": {t: results[f"{t}-live"]["rps"] / results[f"{t}-off"]["rps"] for t in ("rest", "grpc")},
            "drift_ratios": {t: results[f"{t}-off"]["rps"] / results[f"{t}-nodrift"]["rps"] for t in ("rest", "grpc")}}


def fault_phase(servers: Servers, args, cases: dict[str, Case]) -> dict:
    """Each server in turn under --fault-seconds of wrk, its RSS sampled every second; logging off
    first and last, so that a slower moment of the machine shows as the difference of the two."""
    out = {}
    for name, variant in (("off", "off"), ("dead", "dead"), ("slow", "slow"), ("off, again", "off")):
        case = cases[f"rest-{variant}"]
        pgid = case.target.proc.pid
        sv.wait_idle(pgid)
        rss, stop = [], threading.Event()

        def sample(pgid=pgid, rss=rss, stop=stop):
            while not stop.wait(1):
                rss.append(sv.group_rss_bytes(pgid))

        rss.append(sv.group_rss_bytes(pgid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        log(f"payload: faults: {name}, {args.fault_seconds} s of load ...")
        result = case.measure(servers, args.fault_seconds)
        stop.set()
        sampler.join()
        time.sleep(args.settle)  # what the sink holds times out or answers: the identity holds when nothing is held
        events = event_outcomes(case.target.http_base)
        out[name] = {k: result[k] for k in ("rps", "requests", "errors", "latency_ms")} | {
            "server_cpu_ms_per_request": result["server_cpu_s"] * 1000 / max(1, result["requests"]),
            "rss_start_mb": rss[0] / 2**20, "rss_max_mb": max(rss) / 2**20, "rss_end_mb": rss[-1] / 2**20,
            "events": events}
    return out


# -- drift ------------------------------------------------------------------------------------------


def shifted_kinds(test, seed: int = 0) -> dict[str, np.ndarray]:
    """Traffic that is visibly not MNIST's test set, each kind made from test images (seeded)."""
    rng = np.random.default_rng(seed)
    images = test.images[rng.permutation(len(test.images))][:DRIFT_CAP]

    def each(transform) -> np.ndarray:
        return np.stack([np.asarray(transform(Image.fromarray(image)), np.uint8) for image in images])

    two = test.images[np.isin(test.labels, (1, 7))]
    return {
        "two classes only (1 and 7)": two[rng.permutation(len(two))],
        "strong noise (sd 60)": np.clip(images + rng.normal(0, 60, images.shape), 0, 255).astype(np.uint8),
        "rotated 30-45 degrees": each(lambda im: im.rotate(float(rng.uniform(30, 45) * rng.choice((-1, 1))),
                                                           resample=Image.BILINEAR)),
        "inverted": 255 - images,
        "thicker strokes (3x3 max filter)": each(lambda im: im.filter(ImageFilter.MaxFilter(3))),
        "shifted 6 pixels to a corner": np.roll(images, (6, 6), axis=(1, 2)),
    }


def drift_phase(servers: Servers, args, model_dir: Path, test) -> dict:
    version = LocalRepository(model_dir).resolve(args.model_name)
    if Model.load(LocalRepository(model_dir).directory(args.model_name, version)).profile is None:
        raise RuntimeError("the model has no reference profile: train it with this mnist-train (no --val-size 0)")
    log("payload: drift: mnist-serve with its defaults ...")
    _, base = sv.start_service(servers, "drift", model_dir, args.model_name, cpus=common.EVERY_CPU)
    session = requests.Session()

    def send(image: np.ndarray) -> None:
        body = {"instances": [image.reshape(784).tolist()]}
        if session.post(base + "/v1/predict", json=body, timeout=30).status_code != 200:
            raise RuntimeError("drift: a request failed")

    def scores() -> dict[str, float]:
        found = sv.totals(sv.scrape(base), "mnist_drift_score", by="signal", model_version=str(version))
        return {signal: found.get(signal, 0.0) for signal in SIGNALS}

    def run_until_alarm(images: np.ndarray, every: int = 25) -> tuple[int | None, dict]:
        for i, image in enumerate(images, 1):
            send(image)
            if i % every == 0 and max((now := scores()).values()) > ALARM:
                return i, now
        return None, scores()

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(test.images))
    highest = {signal: 0.0 for signal in SIGNALS}
    for start in range(0, len(order), 100):
        for i in order[start:start + 100]:
            send(test.images[i])
        highest = {signal: max(highest[signal], score) for signal, score in scores().items()}
    log(f"payload: drift: test set, 10,000 requests: highest scores {highest}")
    kinds = {}
    for kind, images in shifted_kinds(test, args.seed).items():
        for i in rng.permutation(len(test.images))[:args.refill]:  # the windows hold the test set again
            send(test.images[i])
        before = scores()
        needed, at_alarm = run_until_alarm(images)
        kinds[kind] = {"requests": needed, "scores_before": before, "scores": at_alarm}
        log(f"payload: drift: {kind}: alarm after {needed} requests; {at_alarm}")
    return {"test_set_highest": highest, "test_set_alarm": max(highest.values()) > ALARM, "kinds": kinds}


# -- the report -------------------------------------------------------------------------------------


def report(args, out: dict, env: dict) -> tuple[str, str]:
    text = []
    if live := out.get("live"):
        def cpu(transport: str, variant: str) -> float:
            return live["results"][f"{transport}-{variant}"]["server_cpu_ms_per_request"]

        rows = []
        for transport in ("rest", "grpc"):
            off, on = live["results"][f"{transport}-off"], live["results"][f"{transport}-live"]
            rows.append({"request": on["request"], "off": off["rps"], "on": on["rps"],
                         "ratio": live["ratios"][transport], "p99_off": off["p99_ms"], "p99_on": on["p99_ms"],
                         "cpu_off": off["server_cpu_ms_per_request"], "cpu_on": on["server_cpu_ms_per_request"]})
        text += ["### Every request logged to a live sink (per core)", "", table(rows, [
            ("request", "{request}"), ("req/s off", "{off:,.0f}"), ("req/s logged", "{on:,.0f}"),
            ("logged / off", "{ratio:.2f}"), ("p99 ms off / logged", "{p99_off:.2f} / {p99_on:.2f}"),
            ("server CPU ms/req off / logged", "{cpu_off:.3f} / {cpu_on:.3f}")]), "",
            f"Target: logged / off >= {TARGET_LIVE}. Events of the logged server: {live['events']}.", "",
            "Payload logging off, drift scores on (the default) / off (DRIFT_WINDOW=0): " + ", ".join(
                f"{t} {ratio:.2f} x the req/s, server CPU {cpu(t, 'off'):.3f} / {cpu(t, 'nodrift'):.3f} ms/req"
                for t, ratio in live["drift_ratios"].items()) + ".", ""]
    if faults := out.get("faults"):
        rows = [{"sink": name, **r, "p99": r["latency_ms"]["p99"], "failed_requests": sum(r["errors"].values()),
                 **{k: r["events"][k] for k in ("sent", "failed", "dropped", "held", "requests")},
                 "identity": "(off)" if name.startswith("off") else
                 sum(r["events"][k] for k in (*OUTCOMES, "held")) == 2 * r["events"]["requests"]}
                for name, r in faults.items()]
        text += [f"### A sink that is down, and one that answers after {SLOW_SINK_SECONDS:g} s "
                 f"({args.fault_seconds} s of load each)", "", table(rows, [
                     ("sink", "{sink}"), ("req/s", "{rps:,.0f}"), ("p99 ms", "{p99:.2f}"),
                     ("failed requests", "{failed_requests}"), ("RSS MB start / max / end",
                                                       "{rss_start_mb:.0f} / {rss_max_mb:.0f} / {rss_end_mb:.0f}"),
                     ("requests (server)", "{requests:,.0f}"), ("events sent / failed / dropped / held",
                                                                "{sent:,.0f} / {failed:,.0f} / {dropped:,.0f} / "
                                                                "{held:,.0f}"),
                     ("sent + failed + dropped + held = 2 x requests", "{identity}")]), "",
                 "RSS: the server's process group (gunicorn's master and worker, the gRPC process)."]
    if drift := out.get("drift"):
        rows = [{"kind": kind, "requests": r["requests"] if r["requests"] is not None else f"> {DRIFT_CAP}",
                 "signal": max(r["scores"], key=r["scores"].get), "score": max(r["scores"].values())}
                for kind, r in drift["kinds"].items()]
        highest = ", ".join(f"{k} {v:.3f}" for k, v in drift["test_set_highest"].items())
        text += ["### Drift: requests until the alarm (any signal's PSI > 0.25)", "",
                 f"The official test set, 10,000 requests in random order: highest scores {highest}: "
                 f"{'an alarm' if drift['test_set_alarm'] else 'no alarm'}.", "",
                 table(rows, [("traffic", "{kind}"), ("requests until the alarm", "{requests}"),
                              ("highest signal", "{signal}"), ("its score", "{score:.2f}")]), ""]
    if factor := out.get("machine_factor"):
        text.append(common.describe_factor(factor))
    heading = f"bench/service/run payload ({', '.join(sorted(args.groups))}), commit {env.get('commit')}"
    return heading, "\n".join(text)


def run(args, servers: Servers, test, model_dir: Path) -> dict:
    version_dir = LocalRepository(model_dir).directory(args.model_name)
    expected = Model.load(version_dir).predict_proba(test.images[:1].reshape(1, 784).astype(np.float32))
    factor_before = yardstick(args.data, args.factor_runs) if "factor" in args.groups else None
    out = {}
    if "drift" in args.groups:
        out["drift"] = drift_phase(servers, args, model_dir, test)
        servers.stop_all()
    args.server_cpu = pin_self("payload")
    if args.groups & {"live", "faults"}:
        variants = {"off": {}}
        if "live" in args.groups:  # and without drift scores: what the request path cost before them
            variants |= {"live": {"PAYLOAD_LOG_URL": start_nginx_sink(servers)}, "nodrift": {"DRIFT_WINDOW": "0"}}
        if "faults" in args.groups:
            variants |= {"dead": {"PAYLOAD_LOG_URL": dead_sink()}, "slow": {"PAYLOAD_LOG_URL": start_slow_sink()}}
        cases = build_cases(servers, args, model_dir, test, expected, variants)
        if "live" in args.groups:
            out["live"] = live_phase(servers, args, cases)
        if "faults" in args.groups:
            out["faults"] = fault_phase(servers, args, cases)
        servers.stop_all()
    if factor_before is not None:
        common.unpin_self()
        out["machine_factor"] = machine_factor(factor_before, yardstick(args.data, args.factor_runs))
    return out


def main() -> int:
    parser = sv.parser("bench/service/run payload", __doc__)
    sv.add_round_options(parser, rounds=4, warmup=2)
    parser.add_argument("--fault-seconds", type=int, default=60, help="seconds of load per faulty sink [60]")
    parser.add_argument("--settle", type=float, default=12, help="seconds after the load before counting events [12]")
    parser.add_argument("--refill", type=int, default=2000, help="test-set requests before each shifted kind [2000]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)} [all]")
    args = parser.parse_args()
    args.groups = set(sv.subset(parser, args.cases, GROUPS))
    sv.check_rounds(parser, args)
    return sv.main("payload", args, run, report, commit=sv.git("rev-parse", "--short", "HEAD"),
                   dirty=bool(sv.git("status", "--porcelain", "--", "service")))


if __name__ == "__main__":
    sys.exit(main())
