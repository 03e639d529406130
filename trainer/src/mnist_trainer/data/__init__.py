"""MNIST as the trainer uses it: `load` a folder or a file (or download the official files), then
`split_validation`. The file formats are read in readers.py, the official files fetched in download.py."""

from __future__ import annotations

import numpy as np

from . import download
from .readers import (
    MNIST,
    DataError,
    Split,
    read,
    read_idx_images,
    read_idx_labels,
    read_kaggle_csv,
    read_keras_npz,
)

__all__ = ["MNIST", "DataError", "Split", "load", "read", "read_idx_images", "read_idx_labels",
           "read_kaggle_csv", "read_keras_npz", "split_validation"]


def load(source=None, *, mirrors=None, cache_dir=None, progress=False) -> MNIST:
    """Read MNIST from a directory or file; source None downloads (or reuses) the official files."""
    if source is None:
        source = download.ensure_official_files(cache_dir=cache_dir, mirrors=mirrors, progress=progress)
    return read(source)


# --- validation split --------------------------------------------------------------------------

def split_validation(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """(rest, validation): `size` examples chosen by a permutation seeded with `seed`."""
    n = len(split.images)
    if size == 0:
        return split, _take(split, np.arange(0))
    if not 0 < size < n:
        raise ValueError(f"validation size must be between 0 and {n - 1} "
                         f"(the training set has {n} images), got {size}")
    order = np.random.default_rng(seed).permutation(n)
    # Sorted indices keep both parts in the original order: each is a plain subset.
    return _take(split, np.sort(order[size:])), _take(split, np.sort(order[:size]))


def _take(split: Split, index: np.ndarray) -> Split:
    return Split(split.images[index], None if split.labels is None else split.labels[index])
