"""Tiny, valid MNIST-format files generated on the fly (tests/ is on sys.path via its conftest)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x000008<ndim>, big-endian dims, then the bytes."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_file(path: Path, content: bytes, gz: bool) -> Path:
    """Write content to path, gzip-compressed (and named .gz) if gz."""
    path = Path(path)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path


def random_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random uint8 images (n, 28, 28) and labels (n,) in 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n, np.uint8)


def write_idx_dataset(directory, n_train: int = 60, n_test: int = 20, seed: int = 0,
                      gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four official IDX files of a random dataset into directory (created if needed).

    Returns official file name (without .gz) -> the array written to it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = random_mnist(n_train, seed)
    test_images, test_labels = random_mnist(n_test, seed + 1)
    arrays = dict(zip(IDX_NAMES, (train_images, train_labels, test_images, test_labels)))
    for name, array in arrays.items():
        write_file(directory / name, idx_bytes(array), gz)
    return arrays
