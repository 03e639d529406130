"""The draw-a-digit page (GET /, /static/...) and the `include_input` option of /v1/predict."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from mnist_artifact import preprocess as images
from service_helpers import digit, png

STATIC = resources.files("mnist_service.http").joinpath("static")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class Page(HTMLParser):
    """What the page's HTML holds: its elements' attributes and any text inside <script>/<style>."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.inline_code: list[str] = []
        self._open = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline_code.append(data)


def _static_files() -> list[str]:
    return sorted(entry.name for entry in STATIC.iterdir() if entry.is_file())


# -- the page -----------------------------------------------------------------------------------

def test_page_has_the_stable_hooks(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = Page(response.get_data(as_text=True))
    hooks = {attrs.get("data-testid"): (tag, attrs) for tag, attrs in page.elements}
    assert hooks["digit-canvas"][0] == "canvas"
    assert (hooks["digit-canvas"][1]["width"], hooks["digit-canvas"][1]["height"]) == ("280", "280")
    assert hooks["digit-canvas"][1]["tabindex"] == "0" and hooks["digit-canvas"][1]["aria-label"]
    assert hooks["clear"][0] == "button" and hooks["prediction"][0] == "output"


@pytest.mark.parametrize("path", ["/", *(f"/static/{name}" for name in _static_files())])
def test_page_and_static_files_carry_the_security_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    suffix = path[path.rfind("."):] if "." in path else ".html"
    assert response.mimetype == CONTENT_TYPES[suffix]


def test_the_api_is_left_without_page_headers(client):
    response = client.get("/healthz")
    assert "Content-Security-Policy" not in response.headers


def test_no_inline_script_or_style(client):
    page = Page(client.get("/").get_data(as_text=True))
    assert page.inline_code == []
    for tag, attrs in page.elements:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs["src"].startswith("/static/")


def test_everything_is_local(client):
    page = Page(client.get("/").get_data(as_text=True))
    for tag, attrs in page.elements:
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith(("/", "data:")), (tag, attrs)
                if attrs[name].startswith("/static/"):
                    assert client.get(attrs[name]).status_code == 200, attrs[name]
    for name in _static_files():
        assert not re.search(r"https?://|//[a-z]", client.get(f"/static/{name}").get_data(as_text=True)), name


# -- include_input ------------------------------------------------------------------------------

def _decode(data_url: str) -> np.ndarray:
    header, _, payload = data_url.partition(",")
    assert header == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
    return np.asarray(image)


def _canvas_drawing() -> bytes:
    """Dark ink off-centre on a white 280x280 canvas, the way the page sends it."""
    canvas = np.full((280, 280), 255, np.uint8)
    canvas[20:132, 150:262] = 255 - np.asarray(Image.fromarray(digit(1)).resize((112, 112)))
    return png(canvas)


def test_include_input_for_an_image_is_what_to_mnist_made(client):
    drawing = _canvas_drawing()
    body = {"instances": [{"b64": "data:image/png;base64," + base64.b64encode(drawing).decode()}],
            "include_input": True}
    prediction = client.post("/v1/predict", json=body).get_json()["predictions"][0]
    expected = images.to_mnist(images.decode(drawing, 10**6))
    np.testing.assert_array_equal(_decode(prediction["input"]), expected)


def test_include_input_for_pixel_lists_is_those_pixels(client):
    pixels = [digit(0), digit(1)]
    body = {"instances": [pixels[0].tolist(), (pixels[1] / 255).tolist()], "include_input": True}
    predictions = client.post("/v1/predict", json=body).get_json()["predictions"]
    for prediction, expected in zip(predictions, pixels, strict=True):
        np.testing.assert_array_equal(_decode(prediction["input"]), expected)


@pytest.mark.parametrize("preprocess", ["mnist", "none"])
def test_include_input_query_for_image_and_multipart_bodies(client, preprocess):
    image = png(digit(2))
    as_seen = images.to_mnist(images.decode(image, 10**6)) if preprocess == "mnist" else digit(2)
    query = f"/v1/predict?include_input=true&preprocess={preprocess}"
    raw = client.post(query, data=image, content_type="image/png").get_json()
    multipart = client.post(query, data={"file": [(io.BytesIO(image), "a.png"), (io.BytesIO(image), "b.png")]},
                            content_type="multipart/form-data").get_json()
    for prediction in raw["predictions"] + multipart["predictions"]:
        np.testing.assert_array_equal(_decode(prediction["input"]), as_seen)


def test_without_include_input_the_response_is_unchanged(client):
    instances = [digit(0).tolist(), {"b64": base64.b64encode(_canvas_drawing()).decode()}]
    plain = client.post("/v1/predict", json={"instances": instances})
    for body in ({"instances": instances, "include_input": False}, {"instances": instances}):
        response = client.post("/v1/predict", json=body)
        assert response.get_data() == plain.get_data()
    assert set(plain.get_json()["predictions"][0]) == {"label", "confidence", "probabilities"}
    with_input = client.post("/v1/predict", json={"instances": instances, "include_input": True}).get_json()
    for a, b in zip(plain.get_json()["predictions"], with_input["predictions"], strict=True):
        assert {k: v for k, v in b.items() if k != "input"} == a


@pytest.mark.parametrize("kwargs", [
    {"json": {"instances": [[0] * 784], "include_input": "yes"}},
    {"json": {"instances": [[0] * 784], "include_input": 1}},
    {"query_string": {"include_input": "maybe"}, "data": png(digit()), "content_type": "image/png"},
])
def test_a_bad_include_input_is_a_422(client, kwargs):
    response = client.post("/v1/predict", **kwargs)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert "include_input" in response.get_json()["error"]["message"]
