"""Open Inference Protocol v2 (binary tensors and JSON, through tritonclient) beside /v1/predict JSON against a
running mnist-serve: one sequential client, batch-1 latency and batch-256 images/s, in interleaved rounds
(bench/README.md, "Open Inference Protocol v2").

    .venv/bin/python -m bench.service.v2_bench --url http://127.0.0.1:8000 [--seconds 10]
    bench/service/run v2 [--url URL] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import requests
import tritonclient.http as triton

from bench.common import latency_ms, load_mnist, log, table

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


def measure(client: Client, images: dict[int, np.ndarray], seconds: float, rounds: int) -> list[dict]:
    """Every path and batch size: requests, p50, p99 and images/s of `seconds`, in `rounds` slices, every case
    once a round."""
    latencies = {(path, size): [] for size in BATCHES for path in PATHS}
    for round_ in range(rounds):
        for path, size in latencies:
            call = client.paths[path]
            latencies[path, size] += timed(lambda call=call, x=images[size]: call(x), seconds / rounds)
        log(f"bench: round {round_ + 1}/{rounds} done")
    return [summary(values, path, size) for (path, size), values in latencies.items()]


def summary(values: list[float], path: str, size: int) -> dict:
    latency = latency_ms([v * 1e3 for v in values])
    return {"protocol": path, "batch": size, "requests": len(values), "p50_ms": latency["p50"],
            "p99_ms": latency["p99"], "images_per_s": size * len(values) / sum(values)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/service/run v2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running mnist-serve")
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="per case (and server), split over --rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", help="MNIST folder (default: $MNIST_DIR, else ../shared/data/mnist)")
    args = parser.parse_args()

    test = load_mnist(args.data).test
    images = {size: test.images[:size].reshape(size, 784) for size in BATCHES}
    client = Client(args.url, args.name)
    client.check(images[BATCHES[-1]])
    results = measure(client, images, args.seconds, args.rounds)
    print(table(results, [("protocol", "{protocol}"), ("batch", "{batch}"), ("requests", "{requests}"),
                          ("p50 ms", "{p50_ms:.2f}"), ("p99 ms", "{p99_ms:.2f}"), ("images/s", "{images_per_s:,.0f}")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
