"""Per-request options and the server's limits on requests.

A request sets its options in the query string, a multipart form field or its JSON body; every
source goes through `read_options`, so an option means the same wherever it is written: a choice
is one of its words, a boolean is true or false (JSON) or one of "true"/"false"/"1"/"0"/... (text,
mnist_artifact.options, as the trainer's CLI reads its environment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mnist_artifact.options import parse_bool, parse_choice, parse_int
from mnist_artifact.preprocess import PREPROCESS

from ..errors import ApiError
from .explain import DEFAULT_METHOD, DEFAULT_STEPS, MAX_STEPS, METHODS

PIXEL_SCALES = ("auto", "unit", "byte")


@dataclass(frozen=True)
class RequestOptions:
    pixel_scale: str = "auto"  # pixel lists: "unit" [0, 1], "byte" 0..255, "auto" tells them apart
    preprocess: str = "mnist"  # images: mnist_artifact.preprocess.PREPROCESS
    include_input: bool = False  # answer with the 28x28 image each instance became
    explain: str | None = None  # METHODS: attach pixel attributions to each prediction
    target: int | None = None  # the class to explain; None: the predicted one
    steps: int = DEFAULT_STEPS  # integrated gradients' path steps


@dataclass(frozen=True)
class Limits:
    max_batch: int = 1024
    max_image_pixels: int = 4096 * 4096
    max_explain: int = 64  # instances per explained request: integrated gradients runs steps x this many

    @classmethod
    def of(cls, settings) -> Limits:
        """The limits a Settings object sets (MAX_BATCH, MAX_IMAGE_PIXELS), the same for both transports."""
        return cls(max_batch=settings.max_batch, max_image_pixels=settings.max_image_pixels)


def _parse_explain(value, text: bool) -> str | None:
    """true (the default method), false, or a method's name."""
    if isinstance(value, str) and value in METHODS:
        return value
    try:
        return DEFAULT_METHOD if parse_bool("explain", value, text=text) else None
    except ValueError:
        raise ValueError(f"explain must be true, false or one of {list(METHODS)}, got {value!r:.40}") from None


PARSERS = {  # name -> parse(value, text)
    "pixel_scale": lambda value, text: parse_choice("pixel_scale", value, PIXEL_SCALES),
    "preprocess": lambda value, text: parse_choice("preprocess", value, PREPROCESS),
    "include_input": lambda value, text: parse_bool("include_input", value, text=text),
    "explain": _parse_explain,
    "target": lambda value, text: parse_int("target", value, 0, 9, text=text),
    "steps": lambda value, text: parse_int("steps", value, 1, MAX_STEPS, text=text),
}


def read_options(values: Mapping, options: RequestOptions = RequestOptions(), *, text: bool = True) -> RequestOptions:
    """`options` with those of PARSERS that `values` sets (text: a query string or form; else a JSON
    object); other keys are left to the caller."""
    changes = {}
    for name, parse in PARSERS.items():
        if name in values:
            try:
                changes[name] = parse(values[name], text)
            except ValueError as e:
                raise ApiError(422, "invalid_request", str(e)) from None
    return replace(options, **changes) if changes else options


def check_batch(n: int, limits: Limits) -> None:
    if n > limits.max_batch:
        raise ApiError(413, "too_many_instances", f"{n} instances; at most {limits.max_batch} (MAX_BATCH) per request")


def check_explained(n: int, limits: Limits) -> None:
    if n > limits.max_explain:
        raise ApiError(413, "too_many_instances", f"{n} instances to explain; at most {limits.max_explain} per request")
