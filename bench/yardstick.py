"""The machine factor's yardstick: `bench/run speed`'s PyTorch case, run alone in this process.

    .bench-venv/bin/python bench/yardstick.py MNIST_DIR RUNS

prints one JSON line, {"runs": [{"samples_per_second", "other_cores"}, ...], "threads": ...}. The
benchmarks call it through common.yardstick, in a process of its own, so that torch's thread pool
never shares a process with the NumPy code being timed.
"""

import json
import sys

from common import load_mnist

import bench


def main(data: str, runs: int) -> None:
    mnist = load_mnist(data)
    train, test = mnist.train, mnist.test
    threads = bench.limit_threads(bench.THREADS)
    results = []
    for seed in range(runs):
        other = bench.other_cpu_seconds()
        run = bench.speed_torch(train.images, train.labels, test.images, test.labels, bench.SPEED.epochs, seed)
        results.append({"samples_per_second": bench.SPEED.epochs * len(train.images) / run["seconds"],
                        "other_cores": max(0.0, (bench.other_cpu_seconds() - other) / run["seconds"])})
    print(json.dumps({"runs": results, "threads": threads}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
