"""Model repositories: mnist-serve reading a local directory against an S3 bucket (moto's server on
loopback): publish-to-served latency, store requests and CPU while polling, wrk throughput, start-up
time. `bench/service/run repository [--publishes 10] [--rounds 3]`; each figure is defined in
bench/README.md ("Models in a bucket").
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bench.common import BUSY, Others, markdown_table, pin_self, random_arrays
from bench.service import servers as sv
from bench.service.servers import WORKERS, difference, http, log, scrape, totals
from mnist_artifact import format
from mnist_artifact.repository import RepositoryError, open_repository, parse_location
from mnist_artifact.repository.s3 import client_config
from mnist_trainer.presets import PRESETS

POLL_SECONDS = 1  # MODEL_POLL_SECONDS of every service here
PROBE_INTERVAL = 0.02  # /v1/models and /readyz are asked this often
STREAK = 20  # consecutive responses with the new version: every worker has swapped
SWAP_TIMEOUT = 30  # seconds a published version may take to be served
BUCKET, REGION = "bench-models", "us-east-1"
CONNECTIONS = 16  # as bench.py
TARGET_RATIO = 0.03  # S3 req/s within 3 % of the directory's
STORES = ("local", "s3")
LABELS = {"local": "local directory", "s3": "S3 (moto, loopback)"}


def layer_sizes(preset: str) -> list[int]:
    return [format.PIXELS, *PRESETS[preset].hidden, len(format.LABELS)]


def publish(uri: str, name: str, sizes: list[int], seed: int) -> tuple[int, float]:
    """Publish a random version of `sizes` to `uri`; (its version, seconds publish() took)."""
    arrays = random_arrays(sizes, seed)
    manifest = format.build_manifest(name, arrays, scale=1 / 255, mean=0.1307, std=0.3081)
    repository = open_repository(parse_location("MODEL_DIR", uri))
    started = time.monotonic()
    version = repository.publish(name, arrays, manifest)
    return version, time.monotonic() - started


def start_moto(servers: sv.Servers) -> str:
    """moto's S3 server on a free loopback port (on this process's CPU, which it inherits), the
    AWS_* variables of this process (and so of every service started after) pointing at it, and
    the bucket; returns the endpoint."""
    port = sv.free_port()
    env = dict(os.environ)
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # moto then accepts any credentials
    proc = servers.start("moto", [str(sv.SERVICE_VENV / "bin/python"), "-m", "moto.server", "-H", "127.0.0.1",
                                  "-p", str(port)], env)
    endpoint = f"http://127.0.0.1:{port}"
    sv.wait_ready(proc, endpoint + "/moto-api/")
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):  # nothing of the caller's AWS
        os.environ.pop(variable, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": REGION,
                       "AWS_ENDPOINT_URL_S3": endpoint})
    boto3.client("s3", config=client_config()).create_bucket(Bucket=BUCKET)
    return endpoint


def serving_version(base: str) -> int | None:
    status, _, raw = http("GET", base + "/v1/models", timeout=5)
    if status != 200:
        raise RuntimeError(f"{base}/v1/models: HTTP {status}: {raw[:200]!r}")
    return json.loads(raw)["models"][0]["serving_version"]


def repository_requests(base: str) -> dict[str, float]:
    """mnist_model_repository_requests_total by operation, summed over the workers."""
    return totals(scrape(base), "mnist_model_repository_requests_total", by="operation")


def wait_swapped(base: str, version: int, published: float) -> dict:
    """Ask /v1/models every PROBE_INTERVAL from `published` (monotonic time) on: seconds to the first
    response serving `version`, and to the first of STREAK consecutive ones."""
    first, streak, streak_start, stale, probes = None, 0, 0.0, 0, 0
    while True:
        served = serving_version(base)
        at = time.monotonic() - published
        probes += 1
        if served == version:
            if first is None:
                first = at
            if streak == 0:
                streak_start = at
            streak += 1
            if streak >= STREAK:
                return {"first_s": first, "all_s": streak_start, "old_after_first": stale, "probes": probes}
        else:
            streak = 0
            stale += first is not None  # a worker that has not swapped yet answered
        if at > SWAP_TIMEOUT:
            raise RuntimeError(f"{base}: version {version} not served by every worker {SWAP_TIMEOUT} s after "
                               f"it was published (serving {served})")
        time.sleep(max(0.0, published + probes * PROBE_INTERVAL - time.monotonic()))


def serve(servers: sv.Servers, name: str, uri: str, args, cpu: int | None, cache: Path, **kwargs):
    return sv.start_service(servers, name, uri, args.model_name, cpus=cpu, MODEL_POLL_SECONDS=str(POLL_SECONDS),
                         MODEL_CACHE_DIR=str(cache), **kwargs)


def measure_swaps(bases: dict[str, str], uris: dict[str, str], args, rng: random.Random) -> dict:
    sizes = layer_sizes("fast")
    results: dict[str, list[dict]] = {store: [] for store in STORES}
    before = {store: repository_requests(base) for store, base in bases.items()}
    for i in range(args.publishes):
        for store in STORES if i % 2 == 0 else STORES[::-1]:
            time.sleep(rng.uniform(0, POLL_SECONDS))  # a random moment of the services' poll cycles
            # The same seed for both stores: both end up serving the same weights.
            version, publish_s = publish(uris[store], args.model_name, sizes, seed=1000 + i)
            published = time.monotonic()
            swap = wait_swapped(bases[store], version, published) | {"version": version, "publish_s": publish_s}
            results[store].append(swap)
            log(f"repository: publish {i + 1}/{args.publishes} {store}: version {version} published in "
                f"{publish_s:.3f} s, served {swap['first_s']:.3f} s later, by every worker {swap['all_s']:.3f} s later")
    requests = {store: difference(repository_requests(base), before[store]) for store, base in bases.items()}
    summary = {}
    for store in STORES:
        runs = results[store]
        summary[store] = {
            key: {"median": statistics.median(r[key] for r in runs), "max": max(r[key] for r in runs)}
            for key in ("first_s", "all_s", "publish_s")}
        summary[store] |= {"runs": runs, "repository_requests": requests[store],
                           "get_per_version": requests[store].get("GetObject", 0.0) / len(runs)}
    return {"layer_sizes": sizes, **summary}


def measure_idle(procs: dict, bases: dict[str, str], moto_pgid: int, seconds: float) -> dict:
    """Nothing published for `seconds`: requests to the store per poll per worker, CPU of each service."""
    time.sleep(2 * POLL_SECONDS)  # the last publish's downloads and swaps are over
    requests_before = {store: (repository_requests(base), time.monotonic()) for store, base in bases.items()}
    pgids = {store: proc.pid for store, proc in procs.items()} | {"moto": moto_pgid}
    cpu_before, others = {name: sv.group_cpu_seconds(pgid) for name, pgid in pgids.items()}, Others()
    time.sleep(seconds)
    cpu = {name: sv.group_cpu_seconds(pgid) - cpu_before[name] for name, pgid in pgids.items()}
    window = time.perf_counter() - others.started
    results = {"other_cpu_cores": others.cores(minus=sum(cpu.values()))}
    for store, base in bases.items():
        before, then = requests_before[store]
        delta = difference(repository_requests(base), before)
        per_second = sum(delta.values()) / (elapsed := time.monotonic() - then)
        results[store] = {"window_s": elapsed, "requests": delta, "requests_per_s": per_second,
                          "requests_per_poll_per_worker": per_second / (WORKERS / POLL_SECONDS),
                          "service_cpu_percent": 100 * cpu[store] / window}
    results["s3"]["moto_cpu_percent"] = 100 * cpu["moto"] / window
    return results


def measure_load(servers: sv.Servers, uris: dict[str, str], caches: dict[str, Path], body: Path, args,
                 cpu: int | None) -> dict:
    """wrk against one service at a time, started for its round: interleaved rounds, local then S3."""
    slices: dict[str, list[dict]] = {store: [] for store in STORES}
    for round_ in range(1, args.rounds + 1):
        for store in STORES:
            name = f"load-{store}-{round_}"
            proc, base = serve(servers, name, uris[store], args, cpu, caches[store])
            url = base + "/v1/predict"
            status, _, raw = http("POST", url, body.read_bytes(), timeout=30)
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}: {raw[:300]!r}")
            sv.run_wrk(servers, url, body, args.warmup, CONNECTIONS)
            before = repository_requests(base)
            result = sv.measure_wrk(servers, proc.pid, url, body, args.seconds, CONNECTIONS)
            result["repository_requests"] = difference(repository_requests(base), before)
            servers.stop(name)
            slices[store].append(result)
            sv.log_round("repository", f"load round {round_}/{args.rounds} {store} (store requests "
                         f"{result['repository_requests'] or 0})", result)
    results = {store: sv.summarize_rounds(runs) for store, runs in slices.items()}
    results["ratio"] = results["s3"]["rps"] / results["local"]["rps"]
    results["ratio_met"] = abs(results["ratio"] - 1) <= TARGET_RATIO
    return results


def measure_starts(servers: sv.Servers, uris: dict[str, str], workdir: Path, args, cpu: int | None) -> dict:
    """Process start to /readyz 200 serving the `best`-shaped version: S3 cold, local, S3 warm, interleaved."""
    sizes = layer_sizes("best")
    versions = {store: publish(uris[store], args.model_name, sizes, seed=7)[0] for store in STORES}
    weights_bytes = sum(a.nbytes for a in random_arrays(sizes, 7).values())
    times: dict[str, list[float]] = {"s3_cold": [], "local": [], "s3_warm": []}
    for i in range(args.starts):
        cache = workdir / f"cache-best-{i}"  # absent: an empty cache, which the cold start fills
        for case, store in (("s3_cold", "s3"), ("local", "local"), ("s3_warm", "s3")):
            name = f"start-{case}-{i}"
            started = time.monotonic()
            proc, base = serve(servers, name, uris[store], args, cpu, cache, ready_interval=PROBE_INTERVAL)
            seconds = time.monotonic() - started
            status, _, raw = http("GET", base + "/readyz")
            served = json.loads(raw)["model"]["version"]
            if served != versions[store]:
                raise RuntimeError(f"{name}: ready with version {served}, not {versions[store]}")
            servers.stop(name)
            times[case].append(seconds)
            log(f"repository: start {i + 1}/{args.starts} {case}: ready in {seconds:.2f} s")
    return {"layer_sizes": sizes, "weights_mib": weights_bytes / (1 << 20),
            **{case: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t}
               for case, t in times.items()}}


def run(args, servers: sv.Servers, test, model_dir: None) -> dict:
    # This process, and so moto and wrk that it starts, on the first CPU; every service on the last.
    server_cpu = pin_self("repository")
    workdir = servers.workdir
    body = sv.single_body(test, workdir)
    endpoint = start_moto(servers)
    log(f"repository: moto's S3 server at {endpoint}, bucket {BUCKET}")
    uris = {"local": str(workdir / "repo-fast"), "s3": f"s3://{BUCKET}/fast"}
    caches = {store: workdir / f"cache-{store}" for store in STORES}
    for store in STORES:
        publish(uris[store], args.model_name, layer_sizes("fast"), seed=0)

    procs, bases = {}, {}
    for store in STORES:
        procs[store], bases[store] = serve(servers, store, uris[store], args, server_cpu, caches[store])
    log(f"repository: idle polling for {args.idle_seconds:g} s ...")
    idle = measure_idle(procs, bases, servers.running["moto"].pid, args.idle_seconds)
    log(f"repository: {args.publishes} publishes to each store, alternating ...")
    swaps = measure_swaps(bases, uris, args, random.Random(0))
    for store in STORES:
        servers.stop(store)
    log(f"repository: wrk, {args.rounds} rounds of {args.seconds:g} s each ...")
    load = measure_load(servers, uris, caches, body, args, server_cpu)
    log(f"repository: start-up, {args.starts} times each ...")
    starts = measure_starts(servers, {"local": str(workdir / "repo-best"), "s3": f"s3://{BUCKET}/best"}, workdir,
                            args, server_cpu)
    return {"pinned": {"services": server_cpu, "others": min(os.sched_getaffinity(0))},
            "swap": swaps, "idle": idle, "load": load, "start": starts}


def report(args, r: dict, env: dict) -> tuple[str, str]:
    swap, idle, load, start = r["swap"], r["idle"], r["load"], r["start"]

    def seconds(store: str, key: str) -> str:
        return f"{swap[store][key]['median']:.2f} / {swap[store][key]['max']:.2f}"

    def ratio(s3: float, local: float) -> str:
        return f"{s3 / local:.2f}x" if local else "-"

    def per_poll(store: str) -> str:
        counts = idle[store]["requests"]
        polls = idle[store]["window_s"] * WORKERS / POLL_SECONDS
        detail = ", ".join(f"{k} {v / polls:.2f}" for k, v in counts.items())
        return f"{idle[store]['requests_per_poll_per_worker']:.2f}" + (f" ({detail})" if detail else "")

    fast = "-".join(map(str, swap["layer_sizes"]))
    best = "-".join(map(str, start["layer_sizes"]))
    rows = [
        [f"publish() returns → first /v1/models with it, median / max s ({fast})",
         seconds("local", "first_s"), seconds("s3", "first_s"), "-"],
        [f"publish() returns → every worker serves it ({STREAK} in a row), median / max s",
         seconds("local", "all_s"), seconds("s3", "all_s"), "-"],
        ["publish() itself, median / max s", seconds("local", "publish_s"), seconds("s3", "publish_s"), "-"],
        [f"store GETs per new version, {WORKERS} workers together †", "-", f"{swap['s3']['get_per_version']:.2f}", "-"],
        [f"store requests per poll per worker (idle {idle['s3']['window_s']:.0f} s) ‡", per_poll("local") + " *",
         per_poll("s3"), "-"],
        ["service CPU while idle-polling, % of one core", f"{idle['local']['service_cpu_percent']:.2f}",
         f"{idle['s3']['service_cpu_percent']:.2f} (moto {idle['s3']['moto_cpu_percent']:.2f})",
         ratio(idle["s3"]["service_cpu_percent"], idle["local"]["service_cpu_percent"])],
        [f"wrk req/s, median of {args.rounds} rounds (range)",
         f"{load['local']['rps']:,.0f} ({load['local']['rps_min']:,.0f}-{load['local']['rps_max']:,.0f})",
         f"{load['s3']['rps']:,.0f} ({load['s3']['rps_min']:,.0f}-{load['s3']['rps_max']:,.0f})",
         f"**{load['ratio']:.3f}x**"],
        ["wrk p99 ms, median of rounds", f"{load['local']['p99_ms']:.2f}", f"{load['s3']['p99_ms']:.2f}",
         ratio(load["s3"]["p99_ms"], load["local"]["p99_ms"])],
        [f"start → /readyz 200 s, {best} ({start['weights_mib']:.1f} MiB), median of {args.starts}, empty cache",
         f"{start['local']['median_s']:.2f}", f"{start['s3_cold']['median_s']:.2f}",
         ratio(start["s3_cold"]["median_s"], start["local"]["median_s"])],
        ["the same, S3 with the cache filled (a restart in the same pod)", f"{start['local']['median_s']:.2f}",
         f"{start['s3_warm']['median_s']:.2f}", ratio(start["s3_warm"]["median_s"], start["local"]["median_s"])],
    ]
    text = [markdown_table(["figure", LABELS["local"], LABELS["s3"], "S3 / local"], rows)]
    verdict = "met" if load["ratio_met"] else "MISSED"
    errors = load["local"]["error_count"] + load["s3"]["error_count"]
    busiest = max(idle["other_cpu_cores"], load["local"]["other_cores_max"], load["s3"]["other_cores_max"])
    text.append(f"\nThroughput while polling every {POLL_SECONDS} s: S3 / local {load['ratio']:.3f}x (target within "
                f"{TARGET_RATIO:.0%}: {verdict}); wrk errors {errors}. Others' cores: idle window "
                f"{idle['other_cpu_cores']:.2f}, load rounds ≤ "
                f"{max(load['local']['other_cores_max'], load['s3']['other_cores_max']):.2f}"
                + (" (busy machine: suspect, re-run)" if busiest > BUSY else "") + ".\n"
                f"\n† each worker GETs the manifest; the weights once when the workers share MODEL_CACHE_DIR and "
                f"the second finds the first's copy (then verified again), twice when both download at once.\n"
                f"‡ requests/s ÷ ({WORKERS} workers / {POLL_SECONDS} s); a poll starts {POLL_SECONDS} s after the "
                f"previous one ended, so slightly under 1.00 is one request a poll.\n"
                f"* a directory is listed with no request to a store (nothing to count).")
    pinned = r["pinned"]
    where = (f"services on CPU {pinned['services']}, publisher, prober, moto and wrk on CPU {pinned['others']}"
             if pinned["services"] is not None else "nothing pinned")
    heading = (f"bench/service/run repository: MODEL_POLL_SECONDS={POLL_SECONDS}, {WORKERS} workers (gevent) per "
               f"service, {args.publishes} publishes per store, idle {args.idle_seconds:g} s, wrk {args.rounds} x "
               f"{args.seconds} s per store ({CONNECTIONS} connections, 1 thread), {args.starts} starts each; "
               f"{where}; random float32 weights")
    return heading, "\n".join(text)


def main() -> int:
    parser = sv.parser("bench/service/run repository", __doc__, model=False)
    parser.add_argument("--publishes", type=int, default=10, help="versions published to each store [10]")
    parser.add_argument("--idle-seconds", type=float, default=30, help="the idle-polling window [30]")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per store, interleaved [3]")
    parser.add_argument("--seconds", type=int, default=10, help="recorded seconds of wrk per round [10]")
    parser.add_argument("--warmup", type=int, default=3, help="unrecorded seconds of wrk first, every round [3]")
    parser.add_argument("--starts", type=int, default=3, help="start-ups of each kind [3]")
    args = parser.parse_args()
    if min(args.publishes, args.rounds, args.seconds, args.warmup, args.starts) < 1 or args.idle_seconds < 1:
        parser.error("--publishes, --rounds, --seconds, --warmup, --starts and --idle-seconds must be >= 1")
    return sv.main("repository", args, run, report, (RepositoryError, BotoCoreError, ClientError),
                   ("boto3", "moto", "gunicorn"), poll_seconds=POLL_SECONDS, workers=WORKERS)


if __name__ == "__main__":
    sys.exit(main())
