"""Request bodies to pixels: JSON instances, raw image bodies and multipart uploads.

Every path ends in one float32 array (N, 784) on the 0..255 scale with MNIST's polarity
(0 = background, 255 = ink), or an ApiError naming the offending instance.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace

import numpy as np
import orjson

from . import images
from .errors import ApiError

PIXELS, SIDE = 784, 28
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp"}
JSON_FIELDS = {"instances", "pixel_scale", "preprocess", "include_input"}
PIXEL_SCALES = ("auto", "unit", "byte")
PREPROCESS = ("mnist", "none")


@dataclass(frozen=True)
class Options:
    pixel_scale: str = "auto"
    preprocess: str = "mnist"
    max_batch: int = 1024
    max_image_pixels: int = 4096 * 4096
    include_input: bool = False  # answer with the 28x28 image each instance became


def _invalid(message: str, index: int | None = None, code: str = "invalid_instance") -> ApiError:
    details = {"instance": index} if index is not None else None
    prefix = f"instance {index}: " if index is not None else ""
    return ApiError(422, code, prefix + message, details)


# -- JSON ---------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise ValueError(name)


def load_json(body: bytes):
    """Parse a JSON body: 400 when malformed, 422 when it uses NaN/Infinity (not JSON, not pixels)."""
    if not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty: send JSON like {\"instances\": [...]}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        error = e
    # Slow path, errors only. The standard parser tells NaN/Infinity (which some encoders emit)
    # from broken JSON, reads numbers too large for a double, which orjson refuses, and (strict=False)
    # takes raw line breaks inside strings: what `"$(base64 digit.png)"` pastes into a curl body.
    try:
        return json.loads(body, parse_constant=_reject_constant, strict=False)
    except ValueError as e:
        if str(e) in ("NaN", "Infinity", "-Infinity"):
            raise ApiError(422, "non_finite", f"{e} is not a valid pixel value") from None
    except RecursionError:
        pass
    raise ApiError(400, "malformed_json", f"malformed JSON: {error}") from None


def parse_json_request(body: bytes, options: Options) -> tuple[np.ndarray, Options]:
    """The pixels of a JSON body and the options it sets (pixel_scale, preprocess, include_input)."""
    doc = load_json(body)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise ApiError(422, "invalid_request", 'expected a JSON object like {"instances": [...]}')
    if len(doc) > 1:  # options given: check them (the common body is {"instances": [...]} alone)
        unknown = sorted(set(doc) - JSON_FIELDS)
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s) {unknown}; known: {sorted(JSON_FIELDS)}")
        options = replace(options, pixel_scale=_choice(doc, "pixel_scale", PIXEL_SCALES, options.pixel_scale),
                          preprocess=_choice(doc, "preprocess", PREPROCESS, options.preprocess),
                          include_input=_boolean(doc, "include_input", options.include_input))
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise ApiError(422, "invalid_request", '"instances" must be a non-empty list')
    check_batch(len(instances), options)
    if len(instances) == 1:
        return _instance(instances[0], 0, options)[None], options
    return np.stack([_instance(item, i, options) for i, item in enumerate(instances)]), options


def _choice(doc: dict, field: str, allowed: tuple[str, ...], default: str) -> str:
    value = doc.get(field, default)
    if value not in allowed:
        raise ApiError(422, "invalid_request", f'"{field}" must be one of {list(allowed)}, got {value!r}')
    return value


def _boolean(doc: dict, field: str, default: bool) -> bool:
    value = doc.get(field, default)
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_request", f'"{field}" must be true or false, got {value!r}')
    return value


def check_batch(n: int, options: Options) -> None:
    if n > options.max_batch:
        raise ApiError(413, "too_many_instances", f"{n} instances; at most {options.max_batch} (MAX_BATCH) per request")


def _instance(item, index: int, options: Options) -> np.ndarray:
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise _invalid('an image instance is {"b64": "<base64 string>"}', index)
        return image_pixels(decode_base64(item["b64"], index), index, options)
    if isinstance(item, list):
        return _pixel_list(item, index, options.pixel_scale)
    raise _invalid(f"expected a list of pixels or {{\"b64\": ...}}, got {type(item).__name__}", index)


def _pixel_list(item: list, index: int, scale: str) -> np.ndarray:
    if len(item) == SIDE and all(isinstance(row, list) for row in item):
        if any(len(row) != SIDE for row in item):
            raise _invalid("a nested instance must be 28 rows of 28 numbers", index, "wrong_shape")
        flat = [v for row in item for v in row]
    elif len(item) == PIXELS:
        flat = item
    else:
        raise _invalid(f"expected 784 numbers or 28 rows of 28, got a list of {len(item)}", index, "wrong_shape")
    types = set(map(type, flat))
    if not types <= {int, float}:
        bad = sorted(t.__name__ for t in types - {int, float})
        code = "wrong_shape" if "list" in bad else "wrong_type"
        raise _invalid(f"pixels must be numbers, found {', '.join(bad)}", index, code)
    try:
        pixels = np.array(flat, dtype=np.float32)
    except OverflowError:
        raise _invalid("a pixel value is too large", index, "out_of_range") from None
    return _to_byte_scale(pixels, index, scale)


def _to_byte_scale(pixels: np.ndarray, index: int, scale: str) -> np.ndarray:
    # JSON has no NaN (load_json refuses it), and an infinity fails the range check.
    low, high = float(pixels.min()), float(pixels.max())
    if scale == "auto":
        scale = "unit" if high <= 1 else "byte"
    limit = 1 if scale == "unit" else 255
    if low < 0 or high > limit:
        raise _invalid(f"pixel values must be in [0, {limit}] (pixel_scale {scale!r}), found "
                       f"{low:g}..{high:g}", index, "out_of_range")
    if scale == "unit":
        pixels *= 255
    return pixels


def decode_base64(text: str, index: int) -> bytes:
    """Base64 as `base64` prints it (line breaks) or as a browser sends it (a data: URL)."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise _invalid("a data: URL must be base64-encoded (data:image/png;base64,...)", index, "bad_base64")
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("not valid base64", index, "bad_base64") from None


# -- images -------------------------------------------------------------------------------------

def image_pixels(data: bytes, index: int, options: Options) -> np.ndarray:
    try:
        img = images.decode(data, options.max_image_pixels)
        digit = images.to_mnist(img) if options.preprocess == "mnist" else images.as_is(img)
    except images.ImageError as e:
        raise ApiError(e.status, e.code, f"instance {index}: {e}", {"instance": index}) from None
    return digit.reshape(PIXELS).astype(np.float32)


def parse_image_body(body: bytes, content_type: str, options: Options) -> np.ndarray:
    if content_type not in IMAGE_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported image type {content_type!r}; send one of {sorted(IMAGE_TYPES)}")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty")
    return image_pixels(body, 0, options)[None]


def parse_uploads(files: list[bytes], options: Options) -> np.ndarray:
    if not files:
        raise ApiError(422, "invalid_request", "multipart body has no file in the field 'file'")
    check_batch(len(files), options)
    return np.stack([image_pixels(data, i, options) for i, data in enumerate(files)])
