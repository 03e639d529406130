"""Trainer test helpers: `mnist-train` run as a user runs it, in a real process."""

import os
import subprocess
import sys


def run(*args, env=None, **kwargs):
    """`mnist-train *args`, with no MNIST_/MODEL_ variable of this shell leaking in."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "MODEL_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mnist_trainer.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=120, **kwargs)
