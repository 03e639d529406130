"""codecs/v1.py's JSON pixels: the fast path (no per-value type check when the body's bytes show
numbers only) answers exactly as the checked path does, whatever the body holds."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_service.codecs import v1
from mnist_service.dataplane.options import Limits, RequestOptions
from mnist_service.errors import ApiError

PIXEL = st.one_of(st.integers(0, 255), st.floats(0, 255), st.integers(-3, 300), st.floats(0, 1))
ODD = st.one_of(st.booleans(), st.none(), st.text(max_size=3), st.lists(st.integers(0, 9), max_size=2),
                st.integers(2**63, 2**70))


@st.composite
def bodies(draw) -> bytes:
    values = draw(st.lists(PIXEL, min_size=784, max_size=784))
    for _ in range(draw(st.integers(0, 2))):  # now and then a value that is not a pixel
        values[draw(st.integers(0, 783))] = draw(ODD)
    instance = [values[i:i + 28] for i in range(0, 784, 28)] if draw(st.booleans()) else values
    doc = {"instances": [instance] * draw(st.integers(1, 2))}
    if draw(st.booleans()):
        doc["pixel_scale"] = draw(st.sampled_from(["auto", "byte"]))
    return json.dumps(doc).encode()


def _outcome(body: bytes):
    try:
        return v1.decode_json(body, Limits(), RequestOptions())[0]
    except ApiError as e:
        return e.status, e.code


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_the_fast_path_answers_as_the_checked_path(body):
    fast = _outcome(body)
    checked_gate, v1._numbers_only = v1._numbers_only, lambda body, doc: False
    try:
        checked = _outcome(body)
    finally:
        v1._numbers_only = checked_gate
    if isinstance(checked, np.ndarray):
        assert isinstance(fast, np.ndarray) and np.array_equal(fast, checked)
    else:
        assert fast == checked


def test_the_gate_reads_numbers_only_bodies_and_nothing_else():
    assert v1._numbers_only(b'{"instances": [[0, 1.5, 2e3]]}', {"instances": 0})
    for body in (b'{"instances": [[true, 0]]}', b'{"instances": [[null]]}', b'{"instances": [["1"]]}',
                 b'{"instances": [[0]], "pixel_scale": "byte"}'):
        assert not v1._numbers_only(body, json.loads(body))
