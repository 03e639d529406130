"""Trainer test helpers: `mnist-train` run as a user runs it, in a real process."""

import os
import subprocess
import sys

import numpy as np


def run(*args, env=None, **kwargs):
    """`mnist-train *args`, with no MNIST_/MODEL_ variable of this shell leaking in."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "MODEL_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mnist_trainer.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=120, **kwargs)


def learnable_digits(n, seed=0):
    """Images whose label is the position of a bright 6x6 square, plus noise: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + (k // 5) * 13, 1 + (k % 5) * 5
        images[i, r : r + 6, c : c + 5] = 255
    return images, labels
