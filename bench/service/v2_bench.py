"""Open Inference Protocol v2 (binary tensors, through tritonclient) beside /v1/predict JSON.

    bench/service/v2_bench.py --url http://127.0.0.1:8000 [--seconds 10] [--data DIR]

One client, sequential requests (latency, not saturation), interleaved in rounds so that machine
noise hits both protocols alike: batch-1 latency (p50, p99) and batch-256 images/s, for
  - v2 binary: tritonclient.http with its defaults (binary input and outputs),
  - v1 JSON: requests.post to /v1/predict with {"instances": [[784 ints], ...]}.
Both return the same probabilities (checked once). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as triton

from mnist_trainer import data

REPO = Path(__file__).resolve().parents[2]


def v2_call(client: triton.InferenceServerClient, name: str, images: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    return result.as_numpy("probabilities")


def v1_call(session: requests.Session, url: str, images: np.ndarray) -> np.ndarray:
    response = session.post(url + "/v1/predict", json={"instances": images.tolist()}, timeout=30)
    response.raise_for_status()
    return np.array([p["probabilities"] for p in response.json()["predictions"]], np.float32)


def timed(call, seconds: float) -> list[float]:
    """Latencies (s) of back-to-back calls for about `seconds`."""
    latencies, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="per case, split over --rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", default=os.environ.get("MNIST_DIR") or str(REPO.parent / "shared/data/mnist"))
    args = parser.parse_args()

    test = data.load(args.data).test
    one, batch = test.images[:1].reshape(1, 784), test.images[:256].reshape(256, 784)
    client = triton.InferenceServerClient(args.url.split("://", 1)[1])
    session = requests.Session()
    np.testing.assert_allclose(v2_call(client, args.name, batch), v1_call(session, args.url, batch), atol=1e-6)

    cases = {
        ("v2 binary (tritonclient)", 1): lambda: v2_call(client, args.name, one),
        ("v1 JSON (/v1/predict)", 1): lambda: v1_call(session, args.url, one),
        ("v2 binary (tritonclient)", 256): lambda: v2_call(client, args.name, batch),
        ("v1 JSON (/v1/predict)", 256): lambda: v1_call(session, args.url, batch),
    }
    latencies = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, call in cases.items():
            latencies[case] += timed(call, args.seconds / args.rounds)

    print("| protocol | batch | requests | p50 ms | p99 ms | images/s |")
    print("|---|---|---|---|---|---|")
    for (protocol, size), values in latencies.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        rate = size * len(values) / sum(values)
        print(f"| {protocol} | {size} | {len(values)} | {statistics.median(values) * 1e3:.2f} | "
              f"{p99 * 1e3:.2f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
