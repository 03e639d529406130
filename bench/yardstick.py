"""The machine factor's yardstick, `bench/run speed`'s PyTorch case alone in this process (bench/README.md):
`.bench-venv/bin/python -m bench.yardstick MNIST_DIR RUNS` prints {"runs": [{"samples_per_second", "other_cores"}]}."""

import json
import sys

from bench import trainer
from bench.common import Others, load_mnist


def main(data: str, runs: int) -> None:
    mnist = load_mnist(data)
    train, test = mnist.train, mnist.test
    threads = trainer.limit_threads(trainer.THREADS)
    results = []
    for seed in range(runs):
        others = Others()
        run = trainer.speed_torch(train.images, train.labels, test.images, test.labels, trainer.SPEED.epochs, seed)
        results.append({"samples_per_second": trainer.SPEED.epochs * len(train.images) / run["seconds"],
                         "other_cores": others.cores()})
    print(json.dumps({"runs": results, "threads": threads}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
