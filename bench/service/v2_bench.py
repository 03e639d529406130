"""Open Inference Protocol v2 (binary tensors and JSON, through tritonclient) beside /v1/predict JSON: one
sequential client, batch-1 latency and batch-256 images/s, in interleaved rounds; with --baseline REF,
REF's code against this tree's in the same rounds (bench/README.md, "Open Inference Protocol v2").

    .venv/bin/python -m bench.service.v2_bench --url http://127.0.0.1:8000 [--seconds 10]
    bench/service/run v2 --baseline REF [--after REF] [--model-dir DIR] [--seconds 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench.common import BUSY, Others, latency_ms, load_mnist, log, markdown_table, mnist_path
from bench.service.servers import SERVICE_VENV, Checkout, ensure_model, group_cpu_seconds, session, start_service

BATCHES = (1, 256)
V2_BINARY, V2_JSON, V1_JSON = "v2 binary (tritonclient)", "v2 JSON (tritonclient)", "v1 JSON (/v1/predict)"
PATHS = (V2_BINARY, V2_JSON, V1_JSON)


class Client:
    """One server's three paths, each a call that sends `images` (N, 784) uint8 and returns (N, 10) float32."""

    def __init__(self, url: str, name: str):
        self.url, self.name = url, name
        self.triton = triton.InferenceServerClient(url.split("://", 1)[1])
        self.session = requests.Session()
        self.paths = {V2_BINARY: lambda images: self.v2(images, binary=True),
                      V2_JSON: lambda images: self.v2(images, binary=False),
                      V1_JSON: self.v1}

    def v2(self, images: np.ndarray, binary: bool) -> np.ndarray:
        tensor = triton.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        output = triton.InferRequestedOutput("probabilities", binary_data=binary)
        return self.triton.infer(self.name, [tensor], outputs=[output]).as_numpy("probabilities")

    def v1(self, images: np.ndarray) -> np.ndarray:
        response = self.session.post(self.url + "/v1/predict", json={"instances": images.tolist()}, timeout=30)
        response.raise_for_status()
        return np.array([p["probabilities"] for p in response.json()["predictions"]], np.float32)

    def check(self, images: np.ndarray) -> np.ndarray:
        """The probabilities of `images` by every path, which must agree."""
        answers = {path: call(images) for path, call in self.paths.items()}
        for path, answer in answers.items():
            if not np.allclose(answer, answers[V1_JSON], atol=1e-6):
                raise RuntimeError(f"{self.url}: {path} and {V1_JSON} answer different probabilities")
        return answers[V1_JSON]


def timed(call, seconds: float) -> list[float]:
    """Latencies (s) of back-to-back calls for about `seconds`."""
    latencies, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def measure(clients: dict[str, Client], images: dict[int, np.ndarray], seconds: float, rounds: int) -> dict:
    """{server: {(path, batch): {"requests", "p50_ms", "p99_ms", "images_per_s"}}}: `seconds` per case and
    server, in `rounds` slices; each slice runs on every server, in alternating order from round to round."""
    cases = [(path, size) for size in BATCHES for path in PATHS]
    latencies = {label: {case: [] for case in cases} for label in clients}
    labels = list(clients)
    for round_ in range(rounds):
        for path, size in cases:
            for label in labels if round_ % 2 == 0 else labels[::-1]:
                call = clients[label].paths[path]
                latencies[label][path, size] += timed(lambda call=call, x=images[size]: call(x), seconds / rounds)
        log(f"bench: round {round_ + 1}/{rounds} done")
    return {label: {case: summary(values, case[1]) for case, values in cases.items()}
            for label, cases in latencies.items()}


def summary(values: list[float], size: int) -> dict:
    latency = latency_ms([v * 1e3 for v in values])
    return {"requests": len(values), "p50_ms": latency["p50"], "p99_ms": latency["p99"],
            "images_per_s": size * len(values) / sum(values)}


def table(results: dict) -> str:
    """One server: every path and batch size."""
    return markdown_table(["protocol", "batch", "requests", "p50 ms", "p99 ms", "images/s"],
                          [[path, size, r["requests"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                            f"{r['images_per_s']:,.0f}"] for (path, size), r in results.items()])


def comparison(before: dict, after: dict) -> str:
    """Before and after: batch-1 p50 and batch-256 images/s of every path, and after/before."""
    small, large = BATCHES[0], BATCHES[-1]
    rows = []
    for path in PATHS:
        b1, a1, b256, a256 = before[path, small], after[path, small], before[path, large], after[path, large]
        rows.append([path, f"{b1['p50_ms']:.2f}", f"{a1['p50_ms']:.2f}", f"{a1['p50_ms'] / b1['p50_ms']:.2f}x",
                     f"{b256['images_per_s']:,.0f}", f"{a256['images_per_s']:,.0f}",
                     f"{a256['images_per_s'] / b256['images_per_s']:.2f}x"])
    return markdown_table([
        "protocol", f"batch {small} p50 ms: before", "after", "after/before",
        f"batch {large} images/s: before", "after", "after/before"], rows)


def compare(args, images: dict[int, np.ndarray], servers) -> int:
    """--baseline: two servers of two versions of the code, measured in the same rounds."""
    checkouts = []
    try:
        code = {}  # label -> (venv, description)
        for label, ref in (("before", args.baseline), ("after", args.after)):
            if ref is None:
                code[label] = (SERVICE_VENV, "this working tree (.venv)")
                continue
            checkouts.append(Checkout(ref, servers.workdir, label))
            checkout = checkouts[-1].create()
            code[label] = (checkout.venv, ref if ref.startswith(checkout.commit) else f"{ref} ({checkout.commit})")
        trainer = next((venv for venv, _ in code.values() if (venv / "bin/mnist-train").exists()), SERVICE_VENV)
        model_dir = ensure_model(args.model_dir, args.name, servers.workdir, mnist_path(args.data), venv=trainer)
        clients, pgids = {}, []
        for label, (venv, description) in code.items():
            proc, base = start_service(servers, label, model_dir, args.name, venv=venv, LOG_LEVEL="WARNING")
            log(f"bench: {label}: {description}, {base}")
            clients[label] = Client(base, args.name)
            pgids.append(proc.pid)
        answers = {label: client.check(images[BATCHES[-1]]) for label, client in clients.items()}
        if not np.allclose(answers["before"], answers["after"], atol=1e-6):
            raise RuntimeError("before and after answer different probabilities for the same model")

        servers_cpu, meter = sum(map(group_cpu_seconds, pgids)), Others()
        results = measure(clients, images, args.seconds, args.rounds)
        others = meter.cores(minus=sum(map(group_cpu_seconds, pgids)) - servers_cpu)
    except (RuntimeError, OSError, subprocess.CalledProcessError, requests.RequestException,
            InferenceServerException) as e:
        log(f"bench: failed: {e}")
        return 1
    finally:
        servers.stop_all()
        for checkout in checkouts:
            checkout.remove()
    print(f"\nbefore: {code['before'][1]}; after: {code['after'][1]}; model {model_dir} ({args.name}); "
          f"{args.seconds:g} s per path, batch and server in {args.rounds} interleaved rounds, one sequential "
          f"client; other processes {others:.2f} cores"
          + (" (busy machine: suspect, re-run)" if others > BUSY else "") + "\n")
    print(comparison(results["before"], results["after"]))
    print("\nafter/before: below 1 is faster for p50 ms, above 1 is faster for images/s.")
    for label in ("before", "after"):
        print(f"\n{label} ({code[label][1]}):\n\n{table(results[label])}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/service/run v2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server (without --baseline)")
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="per case (and server), split over --rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", help="MNIST folder (default: $MNIST_DIR, else ../shared/data/mnist)")
    parser.add_argument("--baseline", metavar="REF",
                        help="compare: serve REF's code as 'before' beside 'after' (git worktrees, own venvs)")
    parser.add_argument("--after", metavar="REF", help="with --baseline: REF's code as 'after' (default: this tree)")
    parser.add_argument("--model-dir", help="with --baseline: the MODEL_DIR both serve (default: train a `fast` one)")
    args = parser.parse_args()
    if args.after and not args.baseline:
        parser.error("--after needs --baseline")

    test = load_mnist(args.data).test
    images = {size: test.images[:size].reshape(size, 784) for size in BATCHES}
    if args.baseline:
        with session() as servers:
            return compare(args, images, servers)

    client = Client(args.url, args.name)
    client.check(images[BATCHES[-1]])
    print(table(measure({"server": client}, images, args.seconds, args.rounds)["server"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
