"""Pixel attributions (mnist_service.dataplane.explain): exact gradients, completeness, blind pixels, the heatmap."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mnist_artifact import Model
from mnist_service.dataplane import explain
from service_helpers import digit, write_version

SIZES = (784, 32, 16, 10)  # two hidden layers: the backward pass goes through a ReLU between two matrices


@pytest.fixture
def model(tmp_path) -> Model:
    return Model.load(write_version(tmp_path, 1, sizes=SIZES))


def float64_model(model: Model) -> Model:
    """The same network in float64 (Model does not check dtypes; the artifact format does)."""
    arrays = {f"{kind}{l}": a.astype(np.float64) for kind, layers in (("W", model.weights), ("b", model.biases))
              for l, a in enumerate(layers, start=1)}
    return Model(model.manifest, arrays)


def test_inputs(seed: int = 0) -> np.ndarray:
    """30 inputs (N, 784) uint8: 20 digit-like rings, shifted and dimmed, and 10 random sparse ink patterns."""
    rng = np.random.default_rng(seed)
    images = []
    for s in range(20):
        ring = np.roll(digit(s).astype(np.float64), tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        images.append(np.rint(ring * rng.uniform(0.6, 1.0)).reshape(784))
    for _ in range(10):
        images.append(rng.integers(0, 256, 784) * (rng.random(784) < rng.uniform(0.1, 0.5)))
    return np.array(images, dtype=np.uint8)


test_inputs.__test__ = False  # a helper, not a test


def target_logit(model, pixels, targets) -> np.ndarray:
    logits, _ = explain.logits_and_gradients(model, pixels, targets)
    return logits[np.arange(len(logits)), targets].astype(np.float64)


def completeness_gaps(model, pixels, targets, steps=explain.DEFAULT_STEPS, baseline=0) -> np.ndarray:
    """|sum_i IG_i - (z(x) - z(x'))| / max(|z(x) - z(x')|, 1): relative, or absolute below a change of 1 logit."""
    attributions = explain.integrated_gradients(model, pixels, targets, steps, baseline)
    x_base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), pixels.shape)
    change = target_logit(model, pixels, targets) - target_logit(model, x_base, targets)
    return np.abs(attributions.sum(axis=1) - change) / np.maximum(np.abs(change), 1.0)


# --- the gradient --------------------------------------------------------------------------------

def test_logits_are_the_models(model):
    pixels = test_inputs()
    logits, gradients = explain.logits_and_gradients(model, pixels, 3)
    assert logits.shape == (30, 10) and gradients.shape == (30, 784)
    z = logits - logits.max(axis=1, keepdims=True)
    softmax = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, model.predict_proba(pixels.astype(np.float32)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("target", [0, 4, 9])
def test_gradients_match_central_differences_at_every_pixel(model, target):
    model64 = float64_model(model)
    eps = 1e-3  # pixels are 0..255: z changes by ~1e-6 per step, far from the next ReLU kink
    rng = np.random.default_rng(target)
    for pixels in (digit(target).reshape(784), rng.uniform(0, 255, 784)):
        _, gradient = explain.logits_and_gradients(model64, pixels, target)
        shifted = pixels + eps * np.eye(784)  # row i: pixel i moved by +eps
        numeric = (target_logit(model64, shifted, np.full(784, target))
                   - target_logit(model64, pixels - eps * np.eye(784), np.full(784, target))) / (2 * eps)
        assert gradient.dtype == np.float64
        np.testing.assert_allclose(gradient[0], numeric, rtol=1e-6, atol=1e-9 * np.abs(numeric).max())
        assert np.abs(numeric).max() > 1e-5  # a real signal, not zeros compared with zeros
        # The served float32 network gives the same gradient up to float32 rounding.
        _, gradient32 = explain.logits_and_gradients(model, pixels.astype(np.float32), target)
        assert gradient32.dtype == np.float32
        np.testing.assert_allclose(gradient32[0], gradient[0], rtol=1e-4, atol=1e-6 * np.abs(gradient).max())


def test_gradient_times_input_is_gradient_times_pixels(model):
    pixels = test_inputs()
    targets = np.arange(30) % 10
    _, gradients = explain.logits_and_gradients(model, pixels, targets)
    np.testing.assert_array_equal(explain.gradient_times_input(model, pixels, targets), gradients * pixels)


# --- integrated gradients ----------------------------------------------------------------------

def test_completeness_with_the_default_steps(model):
    pixels = test_inputs()
    predicted = model.predict_proba(pixels.astype(np.float32)).argmax(axis=1)
    gaps = [completeness_gaps(model, pixels, predicted)]
    for target in (0, 3, 7):  # several classes, also ones the model does not pick
        gaps.append(completeness_gaps(model, pixels, np.full(30, target)))
    assert max(g.max() for g in gaps) < 0.01, [float(g.max()) for g in gaps]


def test_completeness_from_another_baseline(model):
    pixels = test_inputs()[:10]
    baseline = np.random.default_rng(1).uniform(0, 64, 784)  # grey noise instead of black
    assert completeness_gaps(model, pixels, np.arange(10), baseline=baseline).max() < 0.01


def test_the_sum_converges_with_more_steps(model):
    pixels = test_inputs()[::3]
    targets = np.arange(10)
    coarse, fine = (completeness_gaps(model, pixels, targets, steps).max() for steps in (16, 512))
    assert fine < coarse / 4  # the error shrinks like 1 / steps: 32 times


def test_blind_and_blank_pixels_get_exactly_zero(tmp_path, model):
    pixels = digit(0).reshape(1, 784)
    blind = np.flatnonzero(pixels[0] > 100)[[0, 7, 30, -1]]  # on the ring: ink that the model cannot see
    arrays = {f"W{l}": w.copy() for l, w in enumerate(model.weights, start=1)}
    arrays |= {f"b{l}": b for l, b in enumerate(model.biases, start=1)}
    arrays["W1"][blind] = 0  # row i of W1: everything pixel i feeds into
    blinded = Model.load(write_version(tmp_path, 2, sizes=SIZES, arrays=arrays))
    for method in explain.METHODS.values():
        for target in range(10):
            attributions = method(blinded, pixels, target)
            assert (attributions[0, blind] == 0).all()
            assert (attributions[0, pixels[0] == 0] == 0).all()  # blank: no ink, nothing to attribute (x = x')
            assert np.abs(attributions).max() > 0


def test_a_batch_equals_each_alone(model):
    pixels = test_inputs()[[0, 5, 20, 25, 29]]
    targets = np.array([1, 8, 3, 3, 0])
    for method in explain.METHODS.values():
        batch = method(model, pixels, targets)
        alone = np.concatenate([method(model, pixels[i], targets[i]) for i in range(5)])
        np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())


def test_methods_take_one_image_or_a_batch_and_check_arguments(model):
    for name, method in explain.METHODS.items():
        assert method(model, digit(0).reshape(784), 3).shape == (1, 784), name
        assert method(model, test_inputs()[:4], [0, 1, 2, 3]).shape == (4, 784), name
        with pytest.raises(ValueError):
            method(model, np.zeros((2, 783)), 0)
        with pytest.raises(ValueError):
            method(model, np.zeros((2, 784)), 10)
        with pytest.raises(ValueError):
            method(model, np.zeros((2, 784)), 1.5)
    with pytest.raises(ValueError):
        explain.integrated_gradients(model, np.zeros(784), 0, steps=0)


# --- the heatmap -------------------------------------------------------------------------------

def decode(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def test_heatmap_colours_positive_red_negative_blue_zero_white():
    attributions = np.zeros((28, 28))
    attributions[3, 4], attributions[10, 10], attributions[20, 5], attributions[27, 27] = 2.0, 1.0, -2.0, -0.5
    rgb = decode(explain.heatmap_data_url(attributions))
    assert rgb.shape == (28, 28, 3)
    assert tuple(rgb[3, 4]) == (178, 24, 43)  # the largest |a|: the ends of the scale
    assert tuple(rgb[20, 5]) == (33, 102, 172)
    assert tuple(rgb[10, 10]) == (216, 140, 149)  # half way from white to red: (255 + 178) / 2, ...
    assert tuple(rgb[27, 27]) == (200, 217, 234)  # a quarter of the way to blue (rounded half to even)
    blank = np.ones((28, 28), bool)
    blank[[3, 10, 20, 27], [4, 10, 5, 27]] = False
    assert (rgb[blank] == 255).all()


def test_heatmap_all_zero_is_white_and_signs_keep_their_colour():
    assert (decode(explain.heatmap_data_url(np.zeros(784))) == 255).all()
    attributions = np.random.default_rng(0).standard_normal((28, 28))
    rgb = decode(explain.heatmap_data_url(attributions))
    reds = attributions > 0
    assert (rgb[reds][:, 0] >= rgb[reds][:, 2]).all() and (rgb[~reds][:, 2] >= rgb[~reds][:, 0]).all()


def test_heatmap_of_real_attributions(model):
    attributions = explain.integrated_gradients(model, digit(1).reshape(784), 5)
    rgb = decode(explain.heatmap_data_url(attributions))
    assert rgb.shape == (28, 28, 3)
    assert (rgb[digit(1) == 0] == 255).all()  # no ink: zero attribution: white
    assert (rgb[digit(1) > 0] != 255).any()


# -- the API: :explain and /v1/predict's "explain" -------------------------------------------------

def test_the_explain_route_answers_attributions_that_add_up(client, model_dir):
    answer = client.post("/v1/models/mnist:explain", json={"instances": [digit(0).tolist(), digit(1).tolist()]})
    assert answer.status_code == 200
    body = answer.get_json()
    model = Model.load(model_dir / "mnist" / "1")
    for i, prediction in enumerate(body["predictions"]):
        explanation = prediction["explanation"]
        assert explanation["method"] == "integrated_gradients" and explanation["steps"] == explain.DEFAULT_STEPS
        assert explanation["target"] == prediction["label"]
        attributions = np.array(explanation["attributions"])
        assert attributions.shape == (28, 28)
        expected = explain.integrated_gradients(model, digit(i).reshape(1, 784).astype(np.float32), prediction["label"])
        np.testing.assert_allclose(attributions.reshape(1, 784), expected, rtol=1e-4, atol=1e-6)
        assert explanation["sum"] == pytest.approx(explanation["logit_difference"], rel=0.01, abs=0.01)
        assert decode(explanation["heatmap"]).shape == (28, 28, 3)


def test_predict_explains_on_request_with_a_method_a_class_and_steps(client):
    body = {"instances": [digit().tolist()], "explain": "gradient_x_input", "target": 3}
    explanation = client.post("/v1/predict", json=body).get_json()["predictions"][0]["explanation"]
    assert explanation["method"] == "gradient_x_input" and explanation["target"] == 3 and "steps" not in explanation
    query = client.post("/v1/predict?explain=true&steps=64", json={"instances": [digit().tolist()]})
    assert query.get_json()["predictions"][0]["explanation"]["steps"] == 64
    plain = client.post("/v1/predict", json={"instances": [digit().tolist()]}).get_json()
    assert "explanation" not in plain["predictions"][0]


@pytest.mark.parametrize("body, status, message", [
    ({"explain": "shap"}, 422, "explain must be true, false or one of"),
    ({"explain": True, "target": 10}, 422, "target must be an integer from 0 to 9"),
    ({"explain": True, "target": True}, 422, "target must be an integer"),
    ({"explain": True, "steps": 5000}, 422, "steps must be an integer from 1 to 1024"),
    ({"explain": True, "instances": [[0] * 784] * 65}, 413, "at most 64"),
])
def test_bad_explanation_options_are_clear_errors(client, body, status, message):
    answer = client.post("/v1/predict", json={"instances": [digit().tolist()], **body})
    assert answer.status_code == status and message in answer.get_json()["error"]["message"]


def test_explanations_count_under_their_own_route(client):
    assert client.post("/v1/models/mnist/versions/1:explain", json={"instances": [digit().tolist()]}).status_code == 200
    exported = client.get("/metrics").get_data(as_text=True)
    assert 'route="/v1/models/<name>/versions/<int:version>:explain"' in exported
