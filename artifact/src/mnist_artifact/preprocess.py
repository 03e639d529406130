"""Pictures of one digit to MNIST-style 28x28 digits: the service and `mnist-train predict` alike.

`prepare` is the whole pipeline: `decode` turns untrusted bytes into a loaded Pillow image (or an
ImageError); `to_mnist` prepares any picture of one digit the way MNIST was made (20x20 box, strokes
no bolder than MNIST's, centre of mass at the centre, white ink on black); `as_is` takes an image
that is already 28x28 without changing it. `png_data_url` shows a digit back.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageOps

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})
# Pillow names phone-camera JPEGs carrying multi-picture data "MPO"; they are JPEG files.
FORMAT_ALIASES = {"MPO": "JPEG"}

PREPROCESS = ("mnist", "none")  # the two ways to prepare a picture: to_mnist, as_is
SIDE = 28
BOX = 20  # MNIST fits each digit into a 20x20 box...
CENTRE = 14.0  # ...and puts its centre of mass here (row and col, pixel indices; measured 13.99, 14.00)
MIN_CONTRAST = 40.0  # ink must differ from the background by this many levels (of 255), else no_ink
INK_FRACTION = 0.15  # pixels under this fraction of the peak are noise when finding the ink's bounding box
# Pen width in MNIST pixels once a digit is fitted to BOX, as stroke_width() measures it. Over MNIST's
# 60,000 training digits: median 2.37, 80th percentile 3.04, 90th 3.20, 95th 3.86 (7.3 % are over
# 3.4). A real MNIST test digit drawn on the 280x280 page along its medial path with the page's
# 20 px brush measures about 2.1 at full size and about 4.5 when drawn in 40 % of the canvas.
BOLD = 3.4  # strokes bolder than this (clearly bolder than MNIST's) are thinned...
THIN_TO = 3.0  # ...to this, MNIST's 80th percentile rather than its median: thinning cannot reopen
# loops a bold pen filled in, and three fast models read small drawings best thinned to 2.8-3.0.
FINE = 4  # strokes are measured and thinned on the digit fitted to FINE * BOX pixels: quarter-pixel steps
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


class ImageError(Exception):
    """A picture that cannot be used. .code is a stable machine code (UNSUPPORTED for a format
    that is not accepted, the others for pictures that cannot be read or hold no digit),
    str(e) a one-line message for users."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


UNSUPPORTED = "unsupported_image_format"


def prepare(data: bytes, preprocess: str = "mnist", max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Bytes of an image file to a uint8 (28, 28) digit, 0 = background, 255 = ink."""
    img = decode(data, max_pixels)
    return to_mnist(img) if preprocess == "mnist" else as_is(img)


# -- decoding -----------------------------------------------------------------------------------

def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded image: its first frame, upright, fully loaded; at most max_pixels pixels."""
    img = _open(data, max_pixels)
    fmt = FORMAT_ALIASES.get(img.format, img.format)
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(UNSUPPORTED,
                         f"{img.format} images are not supported; send one of {', '.join(sorted(ALLOWED_FORMATS))}")
    # The size comes from the header: checking it here, before load(), is what stops decompression bombs.
    if img.width * img.height > max_pixels:
        raise _too_large(max_pixels, f" ({img.width}x{img.height})")
    return _load(img, max_pixels)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own limit fired (its warning is an exception when warnings are errors).
        raise _too_large(max_pixels) from None
    except Exception:  # hostile bytes make Pillow's plugins raise many exception types
        raise ImageError("undecodable_image", "the data is not an image that can be read") from None


def _load(img: Image.Image, max_pixels: int) -> Image.Image:
    """Frame 0 (Image.open's current frame), decoded now so a truncated file fails here."""
    try:
        img.load()
        # Phones store photos sideways and record the rotation in EXIF; browsers apply it, so do we.
        ImageOps.exif_transpose(img, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(max_pixels) from None
    except Exception:  # truncated or corrupt pixel data, whatever the plugin raises
        raise ImageError("undecodable_image", "the image data is truncated or corrupt") from None
    return img


def _too_large(max_pixels: int, size: str = "") -> ImageError:
    return ImageError("image_too_large", f"the image is too large{size}: at most {max_pixels} pixels")


# -- pixels -------------------------------------------------------------------------------------

def _wide_gray(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float pixels on the 0..255 scale; Pillow's convert("L") clips them instead.

    I;16 modes span 0..65535. I and F have no fixed range: values within 0..255 are taken as they
    are (Pillow's convention), within 0..65535 as 16-bit (older Pillow opens 16-bit PNGs as I),
    anything larger is scaled by the image's own maximum.
    """
    a = np.asarray(img, dtype=np.float64)
    peak = float(a.max(initial=0.0))
    if img.mode.startswith("I;16"):
        full = 65535.0
    else:
        full = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(a * (255.0 / full), 0.0, 255.0)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _gray_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance as float 0..255 and opacity as float 0..1 (None when the image is opaque)."""
    if img.mode in WIDE_MODES:
        return _wide_gray(img), None
    if _has_alpha(img):
        # Via RGBA so palette and tRNS transparency become a real alpha channel.
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float64)
        return la[..., 0], la[..., 1] / 255.0
    # convert("L") also handles CMYK (via RGB, including Adobe's inverted CMYK JPEGs) and YCbCr.
    return np.asarray(img.convert("L"), dtype=np.float64), None


def _flatten(gray: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Composite transparent images onto a background that contrasts with their ink.

    Rule: the ink's colour is the opacity-weighted mean luminance. Dark ink goes onto white, light
    ink onto black, so a transparent canvas with black or with white strokes looks like the same
    strokes on opaque paper. Transparent pixels are therefore always background.
    """
    if alpha is None:
        return gray
    weight = alpha.sum()
    ink = (alpha * gray).sum() / weight if weight else 0.0
    paper = 255.0 if ink < 127.5 else 0.0
    return alpha * gray + (1.0 - alpha) * paper


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink strength 0..255 with 0 = paper: bright ink on dark, whatever the picture's polarity."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    # The border is mostly paper; bright paper means dark ink, which MNIST stores inverted.
    ink = gray - background if background < 127.5 else background - gray
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError("no_ink", "no digit found: the image is blank or almost uniform")
    return np.clip(ink, 0.0, None) * (255.0 / peak)


def _crop(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the ink, ignoring faint noise around it."""
    strong = ink > INK_FRACTION * 255.0
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Resize so the longer side is `box` pixels, keeping the aspect ratio and the grey edges."""
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Area averaging when shrinking keeps MNIST's anti-aliased grey edges; bilinear when enlarging.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, resample), dtype=np.float64)
    # Thin strokes lose their peak when averaged; MNIST digits all peak at 254-255.
    return small * (255.0 / small.max())


def stroke_width(ink: np.ndarray) -> float:
    """The width in pixels of the pen that drew a grey ink image (0 = paper, 255 = full ink): see _erosions."""
    return _erosions(ink)[1]


def pen_width(img: Image.Image) -> float:
    """The width of the pen that drew a picture of one digit, in MNIST pixels once the digit is fitted
    to the 20x20 box: what to_mnist compares with BOLD."""
    return _fitted_erosions(_crop(_ink(_flatten(*_gray_alpha(img)))))[1]


def _fitted_erosions(ink: np.ndarray) -> tuple[list[np.ndarray], float]:
    """_erosions of the cropped ink fitted to FINE * BOX pixels, the width in MNIST pixels."""
    layers, width = _erosions(_fit_box(ink, FINE * BOX))
    return layers, width / FINE


def grey_morphology(images: np.ndarray, extreme: np.ufunc, square: bool = False) -> np.ndarray:
    """Grey dilation (extreme=np.maximum) or erosion (np.minimum) by one pixel over the last two axes:
    each pixel the extreme of its 4-neighbour cross, or of its 3x3 square; outside reads as background (0).
    For one image or a batch: the trainer's stroke-thickness augmentation uses it too."""
    h, w = images.shape[-2:]
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(1, 1), (1, 1)])
    steps = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if square or not (dr and dc)]
    return extreme.reduce([padded[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in steps])


def _erode_once_more(layers: list[np.ndarray]) -> None:
    """Append the last layer eroded once more, the cross and the square in turn (see _erosions)."""
    layers.append(grey_morphology(layers[-1], np.minimum, square=len(layers) % 2 == 0))


def _erosions(ink: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The ink eroded 0, 1, 2, ... times, and the width of the pen that drew it, in pixels.

    Each erosion takes a one-pixel layer off every edge, alternately with the 4-neighbour cross and
    the 3x3 square so the pen stays close to round (an octagon). A stroke of width w loses about the
    same ink, its perimeter's worth, to each erosion until it is gone after w/2 of them. So the width
    is 1 + twice the number of erosions (interpolated) after which an erosion takes less than half
    the ink the first one took. Unlike area / perimeter, this ignores blobs (loops a bold pen filled
    in), which outlast the strokes. Within 13 % for pen lines 4 to 20 px wide at any angle.
    """
    layers, lost = [ink], []
    while True:
        _erode_once_more(layers)
        lost.append(float(layers[-2].sum() - layers[-1].sum()))
        if lost[-1] < lost[0] / 2 or not layers[-1].any():
            break
    if lost[0] <= 0.0:
        return layers, 0.0  # no ink
    if lost[-1] >= lost[0] / 2:  # the last erosion took all that was left
        lost.append(0.0)
    k = len(lost) - 1  # the first erosion that lost less than half as much ink as the first one
    crossing = (k - 1) + (lost[k - 1] - lost[0] / 2) / (lost[k - 1] - lost[k])
    return layers, 2.0 * crossing + 1.0


def _unbold(ink: np.ndarray) -> np.ndarray | None:
    """The cropped ink with its strokes thinned to THIN_TO once fitted to BOX, if they are bolder
    than BOLD; else None. Thinning shrinks the bounding box too, and refitting that to BOX widens the
    strokes again, so BOX * (width - THIN_TO) / (BOX - THIN_TO) of the width is taken off."""
    layers, width = _fitted_erosions(ink)
    if width <= BOLD:
        return None
    removed = BOX * (width - THIN_TO) / (BOX - THIN_TO)
    whole, fraction = divmod(removed * FINE / 2.0, 1.0)  # erosions, each one fine pixel off each side
    while len(layers) < whole + 2:
        _erode_once_more(layers)
    thinned = (1.0 - fraction) * layers[int(whole)] + fraction * layers[int(whole) + 1]
    peak = float(thinned.max())
    if peak < MIN_CONTRAST:  # never thin a digit away (strokes as wide as measured cannot be)
        return None
    return _crop(thinned * (255.0 / peak))


def _centre(digit: np.ndarray) -> np.ndarray:
    """Paste into a 28x28 canvas with the centre of mass at (CENTRE, CENTRE), box kept inside."""
    h, w = digit.shape
    mass = digit.sum()
    row = (digit.sum(axis=1) @ np.arange(h)) / mass
    col = (digit.sum(axis=0) @ np.arange(w)) / mass
    top = min(max(round(CENTRE - row), 0), SIDE - h)
    left = min(max(round(CENTRE - col), 0), SIDE - w)
    canvas = np.zeros((SIDE, SIDE))
    canvas[top:top + h, left:left + w] = digit
    return canvas


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_mnist(img: Image.Image) -> np.ndarray:
    """A picture of one digit as MNIST has it: uint8 (28, 28), 0 = background, 255 = ink.

    Strokes much bolder than MNIST's once fitted to the 20x20 box (a digit drawn small with a wide
    brush, a marker) are thinned first, then the thinner digit is fitted to the box.
    """
    ink = _crop(_ink(_flatten(*_gray_alpha(img))))
    thinned = _unbold(ink)
    return _to_uint8(_centre(_fit_box(ink if thinned is None else thinned)))


def as_is(img: Image.Image) -> np.ndarray:
    """A 28x28 image's grey levels unchanged (alpha composited on black): uint8 (28, 28)."""
    if img.size != (SIDE, SIDE):
        raise ImageError("wrong_image_size",
                         f"without preprocessing the image must be {SIDE}x{SIDE}, got {img.width}x{img.height}")
    gray, alpha = _gray_alpha(img)
    return _to_uint8(gray if alpha is None else gray * alpha)


def png_data_url(digit: np.ndarray) -> str:
    """A uint8 (28, 28) digit, or any (H, W) grey or (H, W, 3) RGB image, as a data:image/png;base64 URL:
    what a browser's <img src> takes."""
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
