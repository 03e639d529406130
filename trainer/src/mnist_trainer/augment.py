"""Data augmentation on batches of 28x28 uint8 digits, vectorised over the batch.

- shift: whole-pixel translations of up to `max_shift` px in x and y (zero fill).
- affine: small random rotation, scale, shear and translation with bilinear resampling;
  Simard et al. (2003) show distortions like these take a plain MLP from ~1.6 % to ~1.1 % error.
- elastic: one sampling grid per image, a random affine map (rotation, horizontal shear, scale per
  axis, translation) plus Simard's elastic displacement field, then random stroke thickness.
  Elastic distortions take a plain MLP to 0.7 % error (Simard et al. 2003) and, with affine ones,
  big MLPs to 0.35 % (Ciresan et al. 2010). The thickness change, thinner and bolder, is for digits
  drawn on a web canvas: fitted to MNIST's 20x20 box, small drawings come out about twice as bold.
"""

from __future__ import annotations

import numpy as np

from mnist_artifact.preprocess import grey_morphology

SIDE = 28
CENTRE = (SIDE - 1) / 2  # the centre of rotation, scaling and shear, in pixel coordinates


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift]."""
    batch = len(images)
    m = max_shift
    padded = np.zeros((batch, SIDE + 2 * m, SIDE + 2 * m), images.dtype)
    padded[:, m : m + SIDE, m : m + SIDE] = images
    dy = rng.integers(-m, m + 1, batch)
    dx = rng.integers(-m, m + 1, batch)
    rows = (np.arange(SIDE)[None, :] + m - dy[:, None])[:, :, None]  # (B, 28, 1)
    cols = (np.arange(SIDE)[None, :] + m - dx[:, None])[:, None, :]  # (B, 1, 28)
    return padded[np.arange(batch)[:, None, None], rows, cols]


def random_affine(images: np.ndarray, rng: np.random.Generator, *, max_rotation: float = 12.0,
                  max_scale: float = 0.12, max_shear: float = 0.15, max_shift: float = 2.0) -> np.ndarray:
    """Random affine warp of each image (degrees, relative scale, shear factor, pixels)."""
    batch = len(images)
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, batch))
    scale = 1.0 + rng.uniform(-max_scale, max_scale, batch)
    shear = rng.uniform(-max_shear, max_shear, batch)
    shift = rng.uniform(-max_shift, max_shift, (batch, 2))

    # Inverse map: for each output pixel, where to sample in the input (output -> input).
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    a, b = cos, -sin + shear * cos  # row 1 of rotation @ shear, divided by scale
    c, d = sin, cos + shear * sin  # row 2
    return _bilinear(images, *_sampling_grid((a, b, c, d), (CENTRE - shift[:, 0], CENTRE - shift[:, 1])))


def random_elastic(images: np.ndarray, rng: np.random.Generator, *, alpha: float = 34.0, sigma: float = 4.0,
                   max_rotation: float = 6.0, max_scale: float = 0.08, max_shear: float = 0.1,
                   max_shift: float = 1.5) -> np.ndarray:
    """Random affine map plus elastic displacement: one sampling grid per image, one bilinear gather.

    alpha, sigma: the elastic field (elastic_field); 34 and 4 are Simard et al. (2003).
    max_rotation (degrees), max_scale (each axis on its own), max_shear (a horizontal slant factor),
    max_shift (pixels): about half of Ciresan et al. (2010), who rotate and shear by up to 15 deg
    (a shear factor of tan 15 deg = 0.27) and scale by 15-20 % per axis over hundreds of epochs. In a
    15-minute budget the network underfits their ranges: 12 deg, 15 %, 0.2 and 2 px gave 99.00 %
    validation accuracy after 70 epochs of the `best` network, these 99.08 % (bench/README.md).
    """
    batch = len(images)
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, batch)).astype(np.float32)
    scale_y, scale_x = 1 + rng.uniform(-max_scale, max_scale, (2, batch)).astype(np.float32)
    shear = rng.uniform(-max_shear, max_shear, batch).astype(np.float32)
    shift_y, shift_x = rng.uniform(-max_shift, max_shift, (2, batch)).astype(np.float32)
    dy, dx = elastic_field(batch, rng, alpha=alpha, sigma=sigma)

    # Output pixel (y, x), centred, -> input pixel: rotation @ [[1, 0], [shear, 1]] @ diag(scale_y, scale_x).
    # The ranges are symmetric, so drawing the inverse map rather than the forward one changes nothing.
    cos, sin = np.cos(angle), np.sin(angle)
    m00, m01 = (cos - sin * shear) * scale_y, -sin * scale_x
    m10, m11 = (sin + cos * shear) * scale_y, cos * scale_x
    src_y, src_x = _sampling_grid((m00, m01, m10, m11), (CENTRE + shift_y, CENTRE + shift_x))
    return _bilinear(images, src_y + dy, src_x + dx)


def elastic_field(batch: int, rng: np.random.Generator, *, alpha: float = 34.0, sigma: float = 4.0) -> np.ndarray:
    """Simard's random displacements (dy, dx) in pixels, shape (2, batch, 28, 28).

    Uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of `sigma` px, times `alpha`.
    The 2-D blur is G @ N @ G.T with the 1-D blur matrix G, one batched matmul for the whole batch.
    For 34 and 4, each component has an RMS of about 1.4 px away from the border.
    """
    noise = 2 * rng.random((2, batch, SIDE, SIDE), dtype=np.float32) - 1
    blur = gaussian_matrix(sigma)
    return alpha * (blur @ noise @ blur.T)


def gaussian_matrix(sigma: float) -> np.ndarray:
    """G with G @ v = v convolved with a normalised Gaussian of `sigma` px, zero outside the image."""
    kernel = np.exp(-0.5 * (np.arange(1 - SIDE, SIDE) / sigma) ** 2)  # offsets -27..27
    kernel /= kernel.sum()
    offset = np.arange(SIDE)[:, None] - np.arange(SIDE)[None, :]
    return kernel[offset + SIDE - 1].astype(np.float32)


def random_thickness(images: np.ndarray, rng: np.random.Generator, *, thinner: float = 0.5,
                     bolder: float = 1.0) -> np.ndarray:
    """Bolder or thinner strokes: per image t in [-thinner, bolder] blends a fraction |t| of the grey
    dilation (t > 0) or erosion (t < 0) over the pixel and its 4 neighbours, about 1 px per side.
    Thinning stops at half: a full erosion leaves a median 31 % of a real digit's ink, a faint ghost."""
    t = rng.uniform(-thinner, bolder, len(images)).astype(np.float32)[:, None, None]
    # Over the 4-neighbour cross, a disk of radius 1, not the 3x3 square.
    target = np.where(t > 0, grey_morphology(images, np.maximum), grey_morphology(images, np.minimum))
    out = (1 - np.abs(t)) * images + np.abs(t) * target  # between image and target: stays in 0..255
    return np.rint(out).astype(images.dtype)


def random_distortion(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "elastic" augmentation: random_elastic, then random_thickness, with their defaults."""
    return random_thickness(random_elastic(images, rng), rng)


def _sampling_grid(matrix, offset) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples its input, (B, 28, 28) twice: for the per-image 2x2 matrices
    [[m00, m01], [m10, m11]] (each coefficient of shape (B,)) acting on the output pixel's position
    relative to CENTRE, plus the per-image offsets (oy, ox) of shape (B,)."""
    m00, m01, m10, m11 = (m[:, None, None] for m in matrix)
    grid = np.arange(SIDE, dtype=np.float32) - CENTRE
    y, x = grid[:, None], grid[None, :]
    return m00 * y + m01 * x + offset[0][:, None, None], m10 * y + m11 * x + offset[1][:, None, None]


def _bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Sample images at fractional coordinates; outside the image reads as background (0)."""
    batch, side = len(images), SIDE + 2
    padded = np.zeros((batch, side, side), np.float32)  # 1-px zero border
    padded[:, 1:-1, 1:-1] = images
    src_y = np.clip(src_y + 1, 0, SIDE + 1 - 1e-3)  # so y0 + 1 and x0 + 1 stay inside too
    src_x = np.clip(src_x + 1, 0, SIDE + 1 - 1e-3)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = (src_y - y0).astype(np.float32), (src_x - x0).astype(np.float32)
    # Flat indices into the padded batch: one gather per corner is ~3x faster than indexing with (n, y, x).
    corner = (y0 * side + x0).astype(np.intp) + side * side * np.arange(batch)[:, None, None]
    flat = padded.ravel()
    top = flat[corner] * (1 - fx) + flat[corner + 1] * fx
    bottom = flat[corner + side] * (1 - fx) + flat[corner + side + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(np.rint(out), 0, 255).astype(images.dtype)


AUGMENTATIONS = {"none": None, "shift": random_shift, "affine": random_affine, "elastic": random_distortion}
