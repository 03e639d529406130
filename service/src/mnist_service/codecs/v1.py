"""The v1 wire format: JSON instances, raw image bodies and multipart uploads in; predictions out.

Every request ends in one float32 array (N, 784) on the 0..255 scale with MNIST's polarity
(0 = background, 255 = ink), or an ApiError naming the offending instance. /v1/predict and the
TF Serving route (`{"instances": [...]}`) both decode here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

import numpy as np
import orjson

from mnist_artifact import preprocess
from mnist_artifact.format import PIXELS, SIDE

from ..dataplane.inference import VERSION
from ..dataplane.options import PARSERS, Limits, RequestOptions, check_batch, read_options
from ..errors import ApiError

if TYPE_CHECKING:
    from ..http.request import InferenceRequest as Request

IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp"}
JSON_FIELDS = {"instances", *PARSERS}
NUMBER_BYTES = b"0123456789+-.eE,[] \t\r\n"  # what JSON numbers and lists of them are written with


def decode_predict(req: Request, limits: Limits) -> tuple[np.ndarray, RequestOptions]:
    """The batch of a /v1/predict request and its options (query string, form fields, JSON body)."""
    options = read_options(req.args)
    content_type = req.mimetype
    if content_type == "application/json" or content_type.endswith("+json"):
        return decode_json(req.body(), limits, options)
    if content_type.startswith("image/"):
        return decode_image_body(req.body(), content_type, limits, options), options
    if content_type == "multipart/form-data":
        options = read_options(req.form, options)
        return decode_uploads([f.read() for f in req.files.getlist("file")], limits, options), options
    raise ApiError(415, "unsupported_media_type",
                   f"unsupported Content-Type {content_type or '(none)'!r}; send application/json, "
                   "an image (image/png, image/jpeg, ...) or multipart/form-data")


def _query(req: Request, name: str) -> str | None:
    """A query parameter, or None. Not `req.args.get`: werkzeug's MultiDict answers a missing key by
    raising and catching a BadRequestKeyError, an HTTPException, which cost ~8 us a request."""
    return req.args[name] if name in req.args else None


def version_asked(req: Request) -> str | None:
    """?version=N, checked: 422 for anything but a positive integer."""
    asked = _query(req, "version")
    if asked is not None and not VERSION.fullmatch(asked):
        raise ApiError(422, "invalid_request", f"version must be a positive integer, got {asked[:20]!r}")
    return asked


def label_asked(req: Request) -> str | None:
    """?label=NAME (stable, canary, ...); 422 beside ?version, which names the model already."""
    label = _query(req, "label")
    if label is not None and "version" in req.args:
        raise ApiError(422, "invalid_request", "ask for a version or a label, not both")
    return label


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


def decode_json(body: bytes, limits: Limits, options: RequestOptions) -> tuple[np.ndarray, RequestOptions]:
    """The pixels of a JSON body and the options in force once its own fields are read."""
    doc = load_json(body)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise ApiError(422, "invalid_request", 'expected a JSON object like {"instances": [...]}')
    if len(doc) > 1:  # options given: check them (the common body is {"instances": [...]} alone)
        unknown = sorted(set(doc) - JSON_FIELDS)
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s) {unknown}; known: {sorted(JSON_FIELDS)}")
        options = read_options(doc, options, text=False)
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise ApiError(422, "invalid_request", '"instances" must be a non-empty list')
    check_batch(len(instances), limits)
    numbers = _numbers_only(body, doc)
    if len(instances) == 1:
        return _instance(instances[0], 0, limits, options, numbers)[None], options
    return np.stack([_instance(item, i, limits, options, numbers) for i, item in enumerate(instances)]), options


def _numbers_only(body: bytes, doc: dict) -> bool:
    """Whether the body's values are all numbers or lists, told from its bytes: once the characters of
    numbers and lists are taken out, no string is left but the keys of `doc` (two quotes each), and no
    true, false or null (their letters but e). Then the pixel lists need no check of each value's type,
    which cost more than their conversion (bench/README.md, "Cost per request")."""
    rest = body.translate(None, NUMBER_BYTES)
    return rest.count(b'"') == 2 * len(doc) and not any(word in rest for word in (b"tru", b"fals", b"null"))


def _instance(item, index: int, limits: Limits, options: RequestOptions, numbers: bool) -> np.ndarray:
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise _invalid('an image instance is {"b64": "<base64 string>"}', index)
        return image_pixels(decode_base64(item["b64"], index), index, limits, options)
    if isinstance(item, list):
        return _pixel_list(item, index, options.pixel_scale, numbers)
    raise _invalid(f"expected a list of pixels or {{\"b64\": ...}}, got {type(item).__name__}", index)


def _pixel_list(item: list, index: int, scale: str, numbers: bool) -> np.ndarray:
    """`numbers`: every value is known to be a number or a list (_numbers_only)."""
    if len(item) == SIDE and all(isinstance(row, list) for row in item):
        if any(len(row) != SIDE for row in item):
            raise _invalid("a nested instance must be 28 rows of 28 numbers", index, "wrong_shape")
        flat = [v for row in item for v in row]
    elif len(item) == PIXELS:
        flat = item
    else:
        raise _invalid(f"expected 784 numbers or 28 rows of 28, got a list of {len(item)}", index, "wrong_shape")
    try:
        if not numbers:  # numpy would take strings, booleans and None (as NaN) for numbers
            _check_types(flat, index)
        pixels = np.array(flat, dtype=np.float32)
    except ValueError:  # a list where a number belongs
        _check_types(flat, index)
        raise
    except OverflowError:
        raise _invalid("a pixel value is too large", index, "out_of_range") from None
    if pixels.ndim != 1:  # lists of one length where the numbers belong
        _check_types(flat, index)
    return _to_byte_scale(pixels, index, scale)


def _check_types(flat: list, index: int) -> None:
    types = set(map(type, flat))
    if not types <= {int, float}:
        bad = sorted(t.__name__ for t in types - {int, float})
        code = "wrong_shape" if "list" in bad else "wrong_type"
        raise _invalid(f"pixels must be numbers, found {', '.join(bad)}", index, code)


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

def image_pixels(data: bytes, index: int, limits: Limits, options: RequestOptions) -> np.ndarray:
    try:
        digit = preprocess.prepare(data, options.preprocess, limits.max_image_pixels)
    except preprocess.ImageError as e:
        status = 415 if e.code == preprocess.UNSUPPORTED else 422
        raise ApiError(status, e.code, f"instance {index}: {e}", {"instance": index}) from None
    return digit.reshape(PIXELS).astype(np.float32)


def decode_image_body(body: bytes, content_type: str, limits: Limits, options: RequestOptions) -> np.ndarray:
    if content_type not in IMAGE_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported image type {content_type!r}; send one of {sorted(IMAGE_TYPES)}")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty")
    return image_pixels(body, 0, limits, options)[None]


def decode_uploads(files: list[bytes], limits: Limits, options: RequestOptions) -> np.ndarray:
    if not files:
        raise ApiError(422, "invalid_request", "multipart body has no file in the field 'file'")
    check_batch(len(files), limits)
    return np.stack([image_pixels(data, i, limits, options) for i, data in enumerate(files)])


# -- predictions --------------------------------------------------------------------------------

def prediction_objects(probabilities: np.ndarray, pixels: np.ndarray | None = None) -> list[dict]:
    """{"label", "confidence", "probabilities"} per instance; with pixels, also the "input" the model saw
    (its 28x28 grey levels, rounded, as a PNG data: URL)."""
    labels, confidences = probabilities.argmax(axis=1).tolist(), probabilities.max(axis=1).tolist()
    predictions = [{"label": label, "confidence": conf, "probabilities": p}
                   for label, conf, p in zip(labels, confidences, probabilities)]
    if pixels is not None:
        digits = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
        for prediction, digit in zip(predictions, digits):
            prediction["input"] = preprocess.png_data_url(digit)
    return predictions
