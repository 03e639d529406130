"""mnist_artifact.preprocess: decoding untrusted uploads and preparing digits the way MNIST was made.

Every image is generated in memory with Pillow; the real-MNIST tests use the `mnist_dir` fixture.
"""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mnist_artifact import preprocess
from mnist_artifact.preprocess import ImageError, as_is, decode, pen_width, prepare, stroke_width, to_mnist
from mnist_trainer import data

LIMIT = 4096 * 4096
CODES = {"unsupported_image_format", "undecodable_image", "image_too_large", "no_ink", "wrong_image_size"}


# -- helpers -----------------------------------------------------------------------------------

def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images."""
    return float(np.corrcoef(np.ravel(a).astype(float), np.ravel(b).astype(float))[0, 1])


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, col) in pixel indices, intensity-weighted."""
    a = np.asarray(a, float)
    return (a.sum(axis=1) @ np.arange(a.shape[0]) / a.sum(), a.sum(axis=0) @ np.arange(a.shape[1]) / a.sum())


def ink_box(a: np.ndarray) -> tuple[int, int]:
    """(height, width) of the non-zero pixels."""
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def draw_seven(draw: ImageDraw.ImageDraw, fill, scale: float = 1.0, width: int | None = None) -> None:
    """An asymmetric glyph (a "7") on a 280x280 canvas times scale: a flip, transpose or rotation changes it."""
    width = width or round(24 * scale)
    draw.line([round(v * scale) for v in (60, 50, 220, 50)], fill=fill, width=width)
    draw.line([round(v * scale) for v in (220, 50, 110, 240)], fill=fill, width=width)


def seven(ink: int = 0, paper: int = 255, mode: str = "L", size: int = 280) -> Image.Image:
    img = Image.new("L", (size, size), paper)
    draw_seven(ImageDraw.Draw(img), ink, size / 280)
    return img.convert(mode)


def bar(size: int = 280) -> Image.Image:
    """A different glyph: a thick horizontal bar, black on white."""
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).rectangle((40, 120, 240, 160), fill=0)
    return img


def grey_digit() -> np.ndarray:
    """A 28x28 uint8 "7" with anti-aliased grey edges, white on black."""
    return np.asarray(seven(ink=255, paper=0, size=1120).resize((28, 28), Image.Resampling.BOX))


@functools.cache
def _real_digits(directory) -> tuple[np.ndarray, ...]:
    return tuple(data.load(directory).test.images[:200])


def raises_image_error(call) -> ImageError:
    with pytest.raises(ImageError) as info:
        call()
    return info.value


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def blank_png(width: int, height: int, with_pixels: bool = True) -> bytes:
    """A valid 1-bit grayscale PNG of zeros, streamed so its pixels are never held in memory.

    Without pixels it is a header-only file: decoding it fails, so only a header check can answer.
    """
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    body = b""
    if with_pixels:
        row = 1 + (width + 7) // 8  # filter byte + packed bits
        rows_per_block = max(1, 4_000_000 // row)
        compressor = zlib.compressobj(9)
        parts = [compressor.compress(b"\0" * row * min(rows_per_block, height - done))
                 for done in range(0, height, rows_per_block)]
        body = png_chunk(b"IDAT", b"".join(parts) + compressor.flush())
    return b"\x89PNG\r\n\x1a\n" + header + body + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return blank_png(20000, 20000)


# -- real MNIST ---------------------------------------------------------------------------------

def test_real_digits_are_reproduced(mnist_dir):
    digits = _real_digits(mnist_dir)
    outputs = [to_mnist(Image.fromarray(d)) for d in digits]
    assert np.mean([corr(o, d) for o, d in zip(outputs, digits)]) > 0.95
    for o in outputs:
        assert o.dtype == np.uint8 and o.shape == (28, 28)
        assert np.abs(np.subtract(centre_of_mass(o), 14.0)).max() <= 1.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_real_digits_dark_on_white_upscaled(mnist_dir, fmt):
    digits = _real_digits(mnist_dir)
    scores = []
    for d in digits:
        photo = Image.fromarray(255 - d).resize((280, 280), Image.Resampling.BILINEAR)
        scores.append(corr(to_mnist(decode(encode(photo, fmt), LIMIT)), d))
    assert np.mean(scores) > 0.9


def test_small_digit_in_a_corner_is_centred(mnist_dir):
    digits = _real_digits(mnist_dir)
    scores = []
    for d in digits:
        canvas = Image.new("L", (300, 300), 255)
        canvas.paste(Image.fromarray(255 - d).resize((40, 40), Image.Resampling.BILINEAR), (255, 5))
        out = to_mnist(decode(encode(canvas, "PNG"), LIMIT))
        assert np.abs(np.subtract(centre_of_mass(out), 14.0)).max() <= 1.0
        scores.append(corr(out, d))
    assert np.mean(scores) > 0.85


# -- geometry -----------------------------------------------------------------------------------

def test_thin_vertical_bar_becomes_a_centred_one():
    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).rectangle((50, 30, 57, 229), fill=0)  # 8 x 200, far left
    out = to_mnist(img)
    height, width = ink_box(out)
    assert height == 20 and width <= 2
    assert np.abs(np.subtract(centre_of_mass(out), 14.0)).max() <= 0.5


def test_aspect_ratio_is_kept():
    img = Image.new("L", (280, 280), 0)
    # 200 wide, 100 tall, drawn with a 20 px pen (2 px once fitted); a filled block would be one very
    # bold stroke, and thinning it would change its proportions.
    ImageDraw.Draw(img).rectangle((20, 150, 219, 249), outline=255, width=20)
    out = to_mnist(img)
    assert ink_box(out) == (10, 20)
    assert out.max() == 255


def test_thin_strokes_keep_a_full_intensity_core():
    img = Image.new("L", (560, 560), 255)
    draw_seven(ImageDraw.Draw(img), 0, scale=2, width=2)  # 380 px tall: strokes shrink to 0.1 px
    out = to_mnist(img)
    assert out.max() == 255  # like every MNIST digit (their peaks are 254-255)


def test_glyph_is_not_flipped_or_transposed():
    out = to_mnist(seven())  # a "7": bar along the top, stem down to the bottom left
    rows = np.flatnonzero(out.any(axis=1))
    top, bottom = out[rows[0]:rows[0] + 3], out[rows[-1] - 2:rows[-1] + 1]
    assert np.count_nonzero(top.any(axis=0)) >= 15
    assert centre_of_mass(bottom)[1] < 11 < centre_of_mass(top)[1]


@settings(max_examples=25, deadline=None)
@given(x=st.integers(0, 200), y=st.integers(0, 200), size=st.integers(30, 120), dark_on_light=st.booleans())
def test_any_placement_is_normalised(x, y, size, dark_on_light):
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    canvas = Image.new("L", (320, 320), paper)
    canvas.paste(seven(ink, paper, size=size), (x, y))
    out = to_mnist(canvas)
    assert max(ink_box(out)) in (19, 20)
    assert np.abs(np.subtract(centre_of_mass(out), 14.0)).max() <= 1.0


# -- stroke width: bold drawings thinned, MNIST's strokes left alone ----------------------------

def pen_line(width: float, angle: float, length: float = 60.0, size: int = 112) -> np.ndarray:
    """A straight pen stroke with round ends, `width` pixels wide, anti-aliased: ink 0..255 on 0."""
    s = 8  # drawn 8x larger, then area-averaged
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    half = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))]) * length / 2 * s
    ends, r = (size * s / 2 - half, size * s / 2 + half), width / 2 * s
    draw.line([*ends[0], *ends[1]], fill=255, width=round(width * s))
    for x, y in ends:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.float64)


@pytest.mark.parametrize("angle", [0, 20, 45, 60, 90, 135])
@pytest.mark.parametrize("width", [4, 8, 12, 20])
def test_stroke_width_of_a_pen_line(width, angle):
    # Widths as strokes of 1 to 5 MNIST pixels are measured (4 pixels per MNIST pixel).
    assert stroke_width(pen_line(width, angle)) == pytest.approx(width, rel=0.13)


def test_stroke_width_ignores_a_filled_in_loop():
    """A bold pen fills a small loop in (a "9" drawn small): the blob does not make the pen wider."""
    img = Image.fromarray(pen_line(8, 90, length=70).astype(np.uint8))
    ImageDraw.Draw(img).ellipse((20, 6, 60, 42), fill=255)  # the loop, filled, on top of the stem
    ink = np.asarray(img, dtype=np.float64)
    assert stroke_width(ink) == pytest.approx(8, rel=0.13)
    rows, cols = np.gradient(ink)
    assert 2 * ink.sum() / np.hypot(rows, cols).sum() > 1.5 * 8  # what area / perimeter would say


def sevens(width: int, scale: float) -> Image.Image:
    """The test "7" drawn with a `width` px pen, `scale` times the full 280x280 canvas, dark on white."""
    img = Image.new("L", (280, 280), 255)
    draw_seven(ImageDraw.Draw(img), 0, scale=scale, width=width)
    return img


def without_thinning(call):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "BOLD", math.inf)
        return call()


def test_a_digit_drawn_small_with_a_wide_brush_is_thinned():
    """The draw-a-digit page's 20 px brush in 40 % of its canvas paints strokes about 4-5 MNIST
    pixels wide once the digit is fitted to 20x20, twice MNIST's. They come out THIN_TO wide, the
    digit still 20 px tall and centred, and closer to the same "7" drawn at full size."""
    small, large = sevens(20, 0.4), sevens(20, 1.0)
    assert pen_width(small) > 4 and pen_width(large) < preprocess.BOLD
    out = to_mnist(small)
    assert pen_width(Image.fromarray(out)) == pytest.approx(preprocess.THIN_TO, abs=0.4)
    assert max(ink_box(out)) in (19, 20)
    assert np.abs(np.subtract(centre_of_mass(out), 14.0)).max() <= 1.0
    bold = without_thinning(lambda: to_mnist(small))
    assert pen_width(Image.fromarray(bold)) > 4
    assert corr(out, to_mnist(large)) > corr(bold, to_mnist(large)) + 0.05


@pytest.mark.parametrize("width", [6, 20, 32])  # 0.6, 2 and 3 MNIST pixels once fitted
def test_strokes_as_wide_as_mnists_are_not_thinned(width):
    img = sevens(width, 1.0)
    assert pen_width(img) <= preprocess.BOLD
    assert np.array_equal(to_mnist(img), without_thinning(lambda: to_mnist(img)))


@pytest.fixture(scope="module")
def uploaded_mnist(mnist_dir) -> dict:
    """500 real MNIST test digits as a user would upload them: 280x280 PNGs, dark ink on white and
    white on black in turn, prepared with and without the thinning of bold strokes."""
    test = data.load(mnist_dir).test
    pngs = [encode(Image.fromarray(255 - d if i % 2 else d).resize((280, 280), Image.Resampling.BILINEAR), "PNG")
            for i, d in enumerate(test.images[:500])]
    return {"labels": test.labels[:500],
            "prepared": np.array([prepare(png) for png in pngs]),
            "unthinned": without_thinning(lambda: np.array([prepare(png) for png in pngs]))}


def test_bold_and_thin_to_are_where_mnist_puts_them(mnist_dir):
    """The constants' comment: MNIST's training digits measure 2.37 at the median, 7 % are bolder than
    BOLD, and THIN_TO lies between the median and the 90th percentile (here on 5,000 of them)."""
    widths = [pen_width(Image.fromarray(d)) for d in data.load(mnist_dir).train.images[:5000]]
    assert np.median(widths) == pytest.approx(2.37, abs=0.1)
    assert 0.04 <= np.mean(np.greater(widths, preprocess.BOLD)) <= 0.1
    assert np.median(widths) < preprocess.THIN_TO < np.percentile(widths, 90) < preprocess.BOLD


def test_real_digits_are_rarely_thinned(uploaded_mnist):
    """Thinning is for strokes clearly bolder than MNIST's: 9 real digits in 10 come out exactly as
    without it (7 % of the training digits measure over BOLD), and those thinned come out near THIN_TO."""
    prepared, unthinned = uploaded_mnist["prepared"], uploaded_mnist["unthinned"]
    changed = [i for i in range(len(prepared)) if not np.array_equal(prepared[i], unthinned[i])]
    assert 0 < len(changed) <= 0.1 * len(prepared)
    before = [pen_width(Image.fromarray(unthinned[i])) for i in changed]
    after = [pen_width(Image.fromarray(prepared[i])) for i in changed]
    assert all(a < b for a, b in zip(after, before))
    assert np.median(after) == pytest.approx(preprocess.THIN_TO, abs=0.4)


def test_real_digits_are_read_as_well_as_without_thinning(uploaded_mnist, mnist_dir):
    """A trained classifier (least squares on 10,000 training digits: linear, so more sensitive to
    stroke width than an MLP) reads the 500 uploaded digits at least as well with the thinning."""
    train = data.load(mnist_dir).train
    x = np.hstack([train.images[:10000].reshape(-1, 784) / 255.0, np.ones((10000, 1))])
    weights = np.linalg.solve(x.T @ x + np.eye(785), x.T @ np.eye(10)[train.labels[:10000]])

    def accuracy(digits: np.ndarray) -> float:
        pixels = np.hstack([digits.reshape(-1, 784) / 255.0, np.ones((len(digits), 1))])
        return float(np.mean((pixels @ weights).argmax(axis=1) == uploaded_mnist["labels"]))

    with_thinning, without = accuracy(uploaded_mnist["prepared"]), accuracy(uploaded_mnist["unthinned"])
    assert with_thinning >= without - 0.01 and with_thinning > 0.75, (with_thinning, without)


# -- transparency, bit depth, colour ------------------------------------------------------------

def canvas_rgba(stroke: tuple[int, int, int], hidden: tuple[int, int, int]) -> Image.Image:
    """A browser-canvas-like drawing: transparent (colour `hidden`) background, anti-aliased strokes."""
    big = Image.new("RGBA", (1120, 1120), (*hidden, 0))
    draw_seven(ImageDraw.Draw(big), (*stroke, 255), scale=4)
    return big.resize((280, 280), Image.Resampling.LANCZOS)


@pytest.mark.parametrize("stroke", [(0, 0, 0), (255, 255, 255)], ids=["black-strokes", "white-strokes"])
@pytest.mark.parametrize("hidden", [(0, 0, 0), (255, 255, 255)], ids=["transparent-black", "transparent-white"])
def test_transparent_canvas_reads_like_opaque_paper(stroke, hidden):
    canvas = canvas_rgba(stroke, hidden)
    paper = (255, 255, 255, 255) if stroke == (0, 0, 0) else (0, 0, 0, 255)
    opaque = Image.alpha_composite(Image.new("RGBA", canvas.size, paper), canvas).convert("L")
    out = to_mnist(decode(encode(canvas, "PNG"), LIMIT))
    assert np.abs(out.astype(int) - to_mnist(opaque)).max() <= 2
    assert corr(out, to_mnist(seven())) > 0.98


def test_palette_png_with_transparent_index():
    img = Image.new("P", (280, 280), 0)
    img.putpalette([0, 0, 0] * 2)  # both entries black: only the transparency tells strokes from paper
    draw_seven(ImageDraw.Draw(img), 1)
    decoded = decode(encode(img, "PNG", transparency=0), LIMIT)
    assert decoded.mode == "P" and decoded.info.get("transparency") == 0
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.98


def test_la_png():
    img = Image.new("LA", (280, 280), (0, 0))
    draw_seven(ImageDraw.Draw(img), (0, 255))
    decoded = decode(encode(img, "PNG"), LIMIT)
    assert decoded.mode == "LA"
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.98


def test_rgb_png_with_transparent_colour():
    img = Image.new("RGB", (280, 280), (255, 255, 255))
    draw_seven(ImageDraw.Draw(img), (250, 250, 250))  # near-white strokes: the transparent paper gives the contrast
    decoded = decode(encode(img, "PNG", transparency=(255, 255, 255)), LIMIT)
    assert decoded.mode == "RGB" and "transparency" in decoded.info
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.98


@pytest.mark.parametrize("make", [
    lambda a: Image.open(io.BytesIO(encode(Image.fromarray(a.astype(np.uint16) * 257), "PNG"))),
    lambda a: Image.fromarray((a.astype(np.uint16) * 257).astype(">u2")),
    lambda a: Image.fromarray(a.astype(np.int32) * 257),
], ids=["I;16-png", "I;16B", "I"])
def test_16_bit_images_are_scaled_not_clipped(make):
    small = grey_digit()
    wide = make(small)
    assert wide.mode in ("I;16", "I;16B", "I")
    assert np.abs(as_is(wide).astype(int) - small).max() <= 1
    assert np.abs(to_mnist(wide).astype(int) - to_mnist(Image.fromarray(small))).max() <= 2


def test_cmyk_jpeg():
    decoded = decode(encode(seven(mode="RGB").convert("CMYK"), "JPEG", quality=95), LIMIT)
    assert decoded.mode == "CMYK"
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.95


@pytest.mark.parametrize("fmt, options", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
                         ids=["gif", "webp", "apng"])
@pytest.mark.parametrize("second", [lambda: Image.new("L", (280, 280), 255), bar], ids=["blank", "other-glyph"])
def test_animation_uses_the_first_frame(fmt, options, second):
    frames = [seven(mode="RGB"), second().convert("RGB")]
    raw = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    decoded = decode(raw, LIMIT)
    assert decoded.n_frames == 2  # really animated
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.95


@pytest.mark.parametrize("fmt, options", [("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True}), ("GIF", {}),
                                          ("PNG", {}), ("JPEG", {})])
def test_allowed_formats_decode(fmt, options):
    decoded = decode(encode(seven(mode="RGB"), fmt, **options), LIMIT)
    assert decoded.format == fmt
    assert corr(to_mnist(decoded), to_mnist(seven())) > 0.95


def test_exif_orientation_is_applied():
    upright = seven(mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored 90 degrees counter-clockwise; viewers rotate it clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    decoded = decode(encode(stored, "JPEG", exif=exif.tobytes()), LIMIT)
    assert corr(to_mnist(decoded), to_mnist(upright)) > 0.9
    assert corr(to_mnist(stored), to_mnist(upright)) < 0.5  # the test glyph really depends on orientation


# -- hostile and unusable input -----------------------------------------------------------------

@pytest.mark.parametrize("max_pixels", [LIMIT, 10**10], ids=["service-limit", "pillow-limit"])
def test_decompression_bomb_is_rejected_from_the_header(bomb, max_pixels):
    started = time.perf_counter()
    error = raises_image_error(lambda: decode(bomb, max_pixels))
    assert time.perf_counter() - started < 1.0
    assert error.code == "image_too_large"


def test_size_is_checked_before_pixels_are_decoded():
    header_only = blank_png(6000, 6000, with_pixels=False)  # under Pillow's own limit
    assert raises_image_error(lambda: decode(header_only, LIMIT)).code == "image_too_large"
    assert raises_image_error(lambda: decode(header_only, 6000 * 6000)).code == "undecodable_image"


def test_pillow_bomb_warning_as_error_is_image_too_large():
    header_only = blank_png(10000, 10000, with_pixels=False)  # between Pillow's warning and error limits
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert raises_image_error(lambda: decode(header_only, 10**10)).code == "image_too_large"


def test_max_pixels_boundary():
    assert decode(blank_png(10, 10), 100).size == (10, 10)
    assert raises_image_error(lambda: decode(blank_png(101, 1), 100)).code == "image_too_large"
    assert raises_image_error(lambda: decode(blank_png(10, 10), 99)).code == "image_too_large"


def truncated(fmt: str) -> bytes:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), np.uint8))
    raw = encode(noise, fmt)
    if fmt == "PNG":
        start = raw.index(b"IDAT")
        (length,) = struct.unpack(">I", raw[start - 4:start])
        return raw[:start + 4 + length // 2]  # cut in the middle of the pixel data
    return raw[:len(raw) // 2]


@pytest.mark.parametrize("raw", [
    truncated("PNG"), truncated("JPEG"), b"", random.Random(0).randbytes(5000), b"\x89PNG\r\n\x1a\n garbage",
], ids=["truncated-png", "truncated-jpeg", "empty", "random", "png-signature-only"])
def test_undecodable(raw):
    error = raises_image_error(lambda: decode(raw, LIMIT))
    assert error.code == "undecodable_image"


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_unsupported_format(fmt):
    error = raises_image_error(lambda: decode(encode(seven(mode="RGB", size=64), fmt), LIMIT))
    assert error.code == "unsupported_image_format"


def faint_noise() -> Image.Image:
    noise = np.random.default_rng(1).integers(-6, 7, (280, 280))
    return Image.fromarray((245 + noise).astype(np.uint8))


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (280, 280), 255),
    lambda: Image.new("L", (280, 280), 0),
    lambda: Image.new("RGB", (280, 280), (128, 90, 200)),
    faint_noise,
    lambda: Image.new("RGBA", (280, 280), (0, 0, 0, 0)),
], ids=["white", "black", "uniform-colour", "faint-noise", "transparent"])
def test_no_ink(make):
    error = raises_image_error(lambda: to_mnist(decode(encode(make(), "PNG"), LIMIT)))
    assert error.code == "no_ink"


# -- preprocess "none" --------------------------------------------------------------------------

def test_as_is_keeps_pixels():
    pixels = np.random.default_rng(2).integers(0, 256, (28, 28), np.uint8)
    pixels[:, :3] = 255  # a bright border must not trigger inversion here
    out = as_is(decode(encode(Image.fromarray(pixels), "PNG"), LIMIT))
    assert out.dtype == np.uint8 and np.array_equal(out, pixels)


def test_as_is_composites_alpha_on_black():
    img = Image.new("LA", (28, 28), (200, 0))
    img.putpixel((3, 4), (200, 128))
    img.putpixel((5, 6), (200, 255))
    out = as_is(img)
    assert out[4, 3] == round(200 * 128 / 255) and out[6, 5] == 200
    assert int(out.sum()) == 100 + 200  # fully transparent pixels are black


@pytest.mark.parametrize("size", [(27, 28), (28, 27), (280, 280)])
def test_as_is_wrong_size(size):
    error = raises_image_error(lambda: as_is(Image.new("L", size)))
    assert error.code == "wrong_image_size"


# -- every error --------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: decode(b"", LIMIT),
    lambda: decode(blank_png(101, 1), 100),
    lambda: decode(encode(Image.new("L", (8, 8)), "TIFF"), LIMIT),
    lambda: to_mnist(Image.new("L", (28, 28))),
    lambda: as_is(Image.new("L", (27, 28))),
], ids=["undecodable", "too-large", "unsupported", "no-ink", "wrong-size"])
def test_errors_are_well_formed(call):
    error = raises_image_error(call)
    assert error.code in CODES
    message = str(error)
    assert message and "\n" not in message and message == message.strip()


def test_allowed_formats_constant():
    assert preprocess.ALLOWED_FORMATS == {"PNG", "JPEG", "GIF", "BMP", "WEBP"}
