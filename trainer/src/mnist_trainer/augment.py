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
    return _bilinear(images, _sampling_grid((a, b, c, d), (CENTRE - shift[:, 0], CENTRE - shift[:, 1])))


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
    # Output pixel (y, x), centred, -> input pixel: rotation @ [[1, 0], [shear, 1]] @ diag(scale_y, scale_x).
    # The ranges are symmetric, so drawing the inverse map rather than the forward one changes nothing.
    cos, sin = np.cos(angle), np.sin(angle)
    m00, m01 = (cos - sin * shear) * scale_y, -sin * scale_x
    m10, m11 = (sin + cos * shear) * scale_y, cos * scale_x
    source = _sampling_grid((m00, m01, m10, m11), (CENTRE + shift_y, CENTRE + shift_x))
    source += elastic_field(batch, rng, alpha=alpha, sigma=sigma)
    return _bilinear(images, source)


def elastic_field(batch: int, rng: np.random.Generator, *, alpha: float = 34.0, sigma: float = 4.0) -> np.ndarray:
    """Simard's random displacements (dy, dx) in pixels, shape (2, batch, 28, 28).

    Uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of `sigma` px, times `alpha`.
    For 34 and 4, each component has an RMS of about 1.4 px away from the border.
    The noise takes 256 levels, (k + 0.5) / 128 for k in -128..127: drawn as bytes it costs a fraction
    of float noise, and no displacement can tell the levels apart after the blur averages ~200 of them.
    """
    noise = rng.integers(-128, 128, (2 * batch * SIDE, SIDE), dtype=np.int8).astype(np.float32)
    noise += 0.5
    blur = gaussian_matrix(sigma)  # symmetric: blur.T == blur
    # The 2-D blur of each noise image N is blur @ N @ blur: two matmuls over all rows at once, the
    # second on the transposed rows. It yields (blur @ N @ blur).T, the field of the noise N.T, which
    # is just as random.
    rows_blurred = (noise @ blur).reshape(2 * batch, SIDE, SIDE)
    field = rows_blurred.transpose(0, 2, 1).reshape(-1, SIDE) @ (blur * np.float32(alpha / 128))
    return field.reshape(2, batch, SIDE, SIDE)


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
    t = rng.uniform(-thinner, bolder, len(images)).astype(np.float32)
    # Over the 4-neighbour cross, a disk of radius 1, not the 3x3 square; each image only the one it needs.
    bolder_ones = t > 0
    target = np.empty(images.shape, np.float32)
    target[bolder_ones] = grey_morphology(images[bolder_ones], np.maximum)
    target[~bolder_ones] = grey_morphology(images[~bolder_ones], np.minimum)
    out = _lerp(images.astype(np.float32), target, np.abs(t)[:, None, None])  # stays in 0..255
    return np.rint(out, out=out).astype(images.dtype)


def random_distortion(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "elastic" augmentation: random_elastic, then random_thickness, with their defaults."""
    return random_thickness(random_elastic(images, rng), rng)


# Each output pixel's position relative to CENTRE, and a 1: (y, x, 1) for the 784 pixels, row-major.
_POSITIONS = np.stack([*np.meshgrid(np.arange(SIDE) - CENTRE, np.arange(SIDE) - CENTRE, indexing="ij"),
                       np.ones((SIDE, SIDE))]).reshape(3, -1).astype(np.float32)


def _sampling_grid(matrix, offset) -> np.ndarray:
    """Where each output pixel samples its input, (2, B, 28, 28) for (y, x): for the per-image 2x2
    matrices [[m00, m01], [m10, m11]] (each coefficient of shape (B,)) acting on the output pixel's
    position relative to CENTRE, plus the per-image offsets (oy, ox) of shape (B,). One small matmul."""
    m00, m01, m10, m11 = matrix
    coefficients = np.array([[m00, m01, offset[0]], [m10, m11, offset[1]]], np.float32)  # (2, 3, B)
    return (coefficients.transpose(0, 2, 1) @ _POSITIONS).reshape(2, -1, SIDE, SIDE)


def _bilinear(images: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Sample images at fractional coordinates source = (y, x), each (B, 28, 28); outside the image
    reads as background (0)."""
    batch, side = len(images), SIDE + 2
    padded = np.zeros((batch, side, side), np.float32)  # 1-px zero border
    padded[:, 1:-1, 1:-1] = images
    # Into the padded frame, clipped so that y0 + 1 and x0 + 1 stay inside too.
    source = np.clip(source, np.float32(-1), np.float32(SIDE - 1e-3))
    source += 1
    whole = np.floor(source)
    fy, fx = source - whole  # the fractions: weights of the lower and right neighbours
    y0, x0 = whole
    # Flat indices into the padded batch: one gather per corner is ~3x faster than indexing with (n, y, x).
    y0 *= side
    y0 += x0
    corner = y0.astype(np.intp)
    corner += side * side * np.arange(batch)[:, None, None]  # in integers: exact for any batch
    flat = padded.ravel()  # flat[1:], flat[side:] and flat[side + 1:] read the other corners
    top = _lerp(flat.take(corner), flat[1:].take(corner), fx)
    bottom = _lerp(flat[side:].take(corner), flat[side + 1 :].take(corner), fx)
    out = np.rint(_lerp(top, bottom, fy))  # a blend of 0..255 pixels: stays within 0..255
    return out.astype(images.dtype)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a + t * (b - a), in place in a and b."""
    b -= a
    b *= t
    a += b
    return a


AUGMENTATIONS = {"none": None, "shift": random_shift, "affine": random_affine, "elastic": random_distortion}
