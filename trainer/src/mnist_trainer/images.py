"""Image files for `mnist-train predict`: decoded by Pillow into MNIST's form (white ink on black).

A lighter recipe than the service's: grayscale, polarity from the border, fit into 20x20 and
centre the box in 28x28. The service adds cropping to the ink and centring by mass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import DataError


def read_image(path: Path) -> np.ndarray:
    """A digit image file as uint8 (28, 28), 0 = background, 255 = ink."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"data: {path}: not a readable image ({e})") from None
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: MNIST is the other way round
        gray = 255 - gray
    if gray.shape == (28, 28):
        return gray
    box = Image.fromarray(gray)
    box.thumbnail((20, 20), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(box, ((28 - box.width) // 2, (28 - box.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)
