"""Weights for artifacts written by tests: random MLP arrays with the names docs/artifact.md gives them."""

from __future__ import annotations

import numpy as np


def random_arrays(sizes=(784, 16, 10), seed: int = 0) -> dict[str, np.ndarray]:
    """W1, b1, ..., WL, bL as float32, He-scaled so that the softmax is not saturated."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        arrays[f"W{l}"] = (rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        arrays[f"b{l}"] = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
    return arrays
