"""Per-request options and the server's limits on requests.

A request sets its options in the query string, a multipart form field or its JSON body; every
source goes through `read_options`, so an option means the same wherever it is written: a choice
is one of its words, a boolean is true or false (JSON) or one of "true"/"false"/"1"/"0"/... (text,
mnist_artifact.options, as the trainer's CLI reads its environment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mnist_artifact.options import parse_bool, parse_choice
from mnist_artifact.preprocess import PREPROCESS

from .errors import ApiError

PIXEL_SCALES = ("auto", "unit", "byte")


@dataclass(frozen=True)
class RequestOptions:
    pixel_scale: str = "auto"  # pixel lists: "unit" [0, 1], "byte" 0..255, "auto" tells them apart
    preprocess: str = "mnist"  # images: mnist_artifact.preprocess.PREPROCESS
    include_input: bool = False  # answer with the 28x28 image each instance became


@dataclass(frozen=True)
class Limits:
    max_batch: int = 1024
    max_image_pixels: int = 4096 * 4096


PARSERS = {  # name -> parse(value, text)
    "pixel_scale": lambda value, text: parse_choice("pixel_scale", value, PIXEL_SCALES),
    "preprocess": lambda value, text: parse_choice("preprocess", value, PREPROCESS),
    "include_input": lambda value, text: parse_bool("include_input", value, text=text),
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
