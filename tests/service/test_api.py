"""The HTTP API through Flask's test client: every input form and the bad-input battery."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_artifact import preprocess
from service_helpers import bomb_png, digit, expected, make_app, png, write_version


def predict(client, body=None, **kwargs):
    return client.post("/v1/predict", json=body, **kwargs) if body is not None else client.post("/v1/predict", **kwargs)


# -- inputs ------------------------------------------------------------------------------------

def test_flat_and_nested_pixel_lists(client, model_dir):
    d = digit()
    response = predict(client, {"instances": [d.reshape(-1).tolist(), d.tolist()]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == {"name": "mnist", "version": 1}
    probabilities = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(probabilities, expected(model_dir, [d, d]), atol=1e-6)
    for p in body["predictions"]:
        assert p["label"] == int(np.argmax(p["probabilities"]))
        assert p["confidence"] == pytest.approx(max(p["probabilities"]))
        assert len(p["probabilities"]) == 10 and sum(p["probabilities"]) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("scale, factor", [("auto", 1 / 255), ("unit", 1 / 255), ("byte", 1)])
def test_pixel_scales(client, model_dir, scale, factor):
    d = digit().astype(float) * factor
    body = predict(client, {"instances": [d.reshape(-1).tolist()], "pixel_scale": scale}).get_json()
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], expected(model_dir, [digit()])[0], atol=1e-6)


def test_predictions_keep_instance_order(client, model_dir):
    digits = [digit(s) for s in range(5)] + [np.zeros((28, 28), np.uint8)]
    body = predict(client, {"instances": [d.tolist() for d in digits]}).get_json()
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected(model_dir, digits),
                               atol=1e-6)


def test_base64_images_in_every_spelling(client):
    data = png(255 - digit(), "L")  # dark ink on white, as people write
    plain = base64.b64encode(data).decode()
    wrapped = base64.encodebytes(data).decode()  # what `base64` prints: line breaks
    url = "data:image/png;base64," + plain  # what a browser canvas gives
    bodies = [predict(client, {"instances": [{"b64": b}]}).get_json() for b in (plain, wrapped, url)]
    # `curl -d "{\"instances\": [{\"b64\": \"$(base64 digit.png)\"}]}"` puts raw line breaks in the string.
    pasted = ('{"instances": [{"b64": "' + wrapped + '"}]}').encode()
    bodies.append(predict(client, data=pasted, content_type="application/json").get_json())
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    reference = predict(client, {"instances": [digit().tolist()]}).get_json()
    assert bodies[0]["predictions"][0]["label"] == reference["predictions"][0]["label"]


def test_raw_image_body_and_multipart_give_the_same_answer(client):
    data = png(digit())
    as_json = predict(client, {"instances": [{"b64": base64.b64encode(data).decode()}]}).get_json()
    raw = predict(client, data=data, content_type="image/png").get_json()
    multipart = predict(client, data={"file": [(io.BytesIO(data), "a.png"), (io.BytesIO(data), "b.png")]},
                        content_type="multipart/form-data").get_json()
    assert raw == as_json
    # A batch of two may round differently in the last float32 bit (BLAS blocking), nothing more.
    probabilities = [p["probabilities"] for p in multipart["predictions"]]
    np.testing.assert_allclose(probabilities, [as_json["predictions"][0]["probabilities"]] * 2, atol=1e-6)


def test_preprocess_none_uses_a_28x28_image_as_is(client, model_dir):
    d = digit()
    shifted = np.roll(d, 5, axis=1)  # off-centre: mnist preprocessing would re-centre it
    body = predict(client, {"instances": [{"b64": base64.b64encode(png(shifted)).decode()}],
                            "preprocess": "none"}).get_json()
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], expected(model_dir, [shifted])[0], atol=1e-6)
    raw = predict(client, data=png(shifted), content_type="image/png", query_string={"preprocess": "none"})
    assert raw.get_json()["predictions"] == body["predictions"]


def test_version_query_answers_with_that_version(model_dir):
    write_version(model_dir, 2, seed=7)
    client = make_app(model_dir).test_client()
    d = digit()
    latest = predict(client, {"instances": [d.tolist()]}).get_json()
    old = predict(client, {"instances": [d.tolist()]}, query_string={"version": "1"}).get_json()
    assert latest["model"]["version"] == 2 and old["model"]["version"] == 1
    np.testing.assert_allclose(old["predictions"][0]["probabilities"], expected(model_dir, [d], 1)[0], atol=1e-6)
    np.testing.assert_allclose(latest["predictions"][0]["probabilities"], expected(model_dir, [d], 2)[0], atol=1e-6)
    missing = predict(client, {"instances": [d.tolist()]}, query_string={"version": "9"})
    assert missing.status_code == 404 and missing.get_json()["error"]["details"]["versions"] == [1, 2]


# -- model information and health ----------------------------------------------------------------

def test_models_and_manifest_endpoints(model_dir):
    write_version(model_dir, 2, seed=1)
    client = make_app(model_dir).test_client()
    models = client.get("/v1/models").get_json()["models"]
    assert models[0]["name"] == "mnist" and models[0]["serving_version"] == 2 and models[0]["versions"] == [1, 2]
    serving = models[0]["serving"]
    assert serving["metrics"]["test"]["accuracy"] == 0.5 and len(serving["sha256"]) == 64 and serving["created"]
    manifest = client.get("/v1/models/mnist/versions/1").get_json()
    assert manifest == json.loads((model_dir / "mnist" / "1" / "manifest.json").read_text())
    assert client.get("/v1/models/mnist/versions/3").status_code == 404
    assert client.get("/v1/models/other/versions/1").status_code == 404


def test_health_and_readiness_without_a_model(tmp_path):
    client = make_app(tmp_path).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no version" in ready.get_json()["error"]["message"]
    unavailable = predict(client, {"instances": [digit().tolist()]})
    assert unavailable.status_code == 503 and unavailable.get_json()["error"]["code"] == "model_unavailable"


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "bad id\x7f"}).headers["X-Request-ID"] != "bad id\x7f"


def _access_lines(captured: str) -> dict[str, dict]:
    entries = [json.loads(line) for line in captured.splitlines() if '"mnist_service.access"' in line]
    return {e["request_id"]: e for e in entries}


def test_every_request_gets_one_access_line_and_its_id_back(client, capfd):
    """/v1/predict is answered in front of Flask; it must be observed exactly like Flask's routes."""
    calls = {"ok": lambda h: predict(client, {"instances": [digit().tolist()] * 3}, headers=h),
             "bad": lambda h: predict(client, {"instances": "x"}, headers=h),
             "no-route": lambda h: client.get("/v1/nothing", headers=h),
             "models": lambda h: client.get("/v1/models", headers=h)}
    for request_id, call in calls.items():
        assert call({"X-Request-ID": request_id}).headers["X-Request-ID"] == request_id
    lines = _access_lines(capfd.readouterr().err)
    assert len(lines) == len(calls)
    assert lines["ok"] | {"latency_ms": 0} == lines["ok"] | {
        "method": "POST", "route": "/v1/predict", "status": 200, "batch_size": 3, "model_version": 1, "latency_ms": 0}
    assert (lines["bad"]["route"], lines["bad"]["status"], lines["bad"]["batch_size"]) == ("/v1/predict", 422, None)
    assert (lines["no-route"]["route"], lines["no-route"]["status"]) == ("unmatched", 404)
    assert (lines["models"]["route"], lines["models"]["status"]) == ("/v1/models", 200)


def test_an_unexpected_failure_is_a_json_500_and_the_next_request_works(client, monkeypatch, capfd, caplog):
    model = client.application.extensions["model_store"].current

    def broken(pixels):
        raise RuntimeError("weights went missing")

    monkeypatch.setattr(model, "predict_proba", broken)
    failed = predict(client, {"instances": [digit().tolist()]}, headers={"X-Request-ID": "boom"})
    assert failed.status_code == 500 and failed.get_json()["error"]["code"] == "internal_error"
    assert "weights went missing" not in failed.get_data(as_text=True)  # logged, not told to the client
    assert _access_lines(capfd.readouterr().err)["boom"]["status"] == 500
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len(logged) == 1 and "weights went missing" in str(logged[0].exc_info[1])
    monkeypatch.undo()
    assert predict(client, {"instances": [digit().tolist()]}).status_code == 200


# -- bad input: a clear 4xx with a JSON body, never a 500 ----------------------------------------

def _gif_animated() -> bytes:
    frames = [Image.fromarray(digit()), Image.fromarray(np.zeros((28, 28), np.uint8))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - digit()).convert("CMYK").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(digit().astype(np.uint16) * 257).save(buffer, "PNG")
    return buffer.getvalue()


def _rgba_canvas() -> bytes:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit()  # black strokes on a transparent canvas
    return png(rgba, "RGBA")


@pytest.mark.parametrize("image", [_gif_animated, _cmyk_jpeg, _png16, _rgba_canvas])
def test_awkward_but_valid_images_are_read_as_the_digit(client, image):
    body = predict(client, {"instances": [{"b64": base64.b64encode(image()).decode()}]})
    assert body.status_code == 200, body.get_json()
    reference = predict(client, {"instances": [digit().tolist()]}).get_json()["predictions"][0]["label"]
    assert body.get_json()["predictions"][0]["label"] == reference


ROW = [0] * 784


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": b"", "content_type": "application/json"}, 400, "empty_body"),
    ({"data": b'{"instances": [', "content_type": "application/json"}, 400, "malformed_json"),
    ({"data": b"[" * 100_000 + b"]" * 100_000, "content_type": "application/json"}, 400, "malformed_json"),
    ({"data": b'{"instances": [[NaN]]}', "content_type": "application/json"}, 422, "non_finite"),
    ({"data": b'{"instances": [[Infinity]]}', "content_type": "application/json"}, 422, "non_finite"),
    ({"json": [ROW]}, 422, "invalid_request"),
    ({"json": {"inputs": [ROW]}}, 422, "invalid_request"),
    ({"json": {"instances": []}}, 422, "invalid_request"),
    ({"json": {"instances": [ROW], "pixel_scale": "percent"}}, 422, "invalid_request"),
    ({"json": {"instances": [ROW], "preprocess": "magic"}}, 422, "invalid_request"),
    ({"json": {"instances": [ROW], "typo": 1}}, 422, "invalid_request"),
    ({"json": {"instances": [[1, 2, 3]]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[0] * 1_000_000]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[[0] * 28] * 27]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[[0] * 27] * 28]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[[0] * 784]]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[True] + [0] * 783]}}, 422, "wrong_type"),
    ({"json": {"instances": [["1"] + [0] * 783]}}, 422, "wrong_type"),
    ({"json": {"instances": [[None] * 784]}}, 422, "wrong_type"),
    ({"json": {"instances": [[False] * 784]}}, 422, "wrong_type"),
    ({"json": {"instances": [[[1, 2]] * 784]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[[0] * 27 + [[0]]] * 28]}}, 422, "wrong_shape"),
    ({"json": {"instances": [[-1] + [0] * 783]}}, 422, "out_of_range"),
    ({"json": {"instances": [[256] + [0] * 783]}}, 422, "out_of_range"),
    ({"json": {"instances": [[10**400] + [0] * 783]}}, 422, "out_of_range"),
    ({"json": {"instances": [[2] + [0] * 783], "pixel_scale": "unit"}}, 422, "out_of_range"),
    ({"json": {"instances": [7]}}, 422, "invalid_instance"),
    ({"json": {"instances": [{"b64": 5}]}}, 422, "invalid_instance"),
    ({"json": {"instances": [{"b64": "not base64!"}]}}, 422, "bad_base64"),
    ({"json": {"instances": [{"b64": "data:image/png,abc"}]}}, 422, "bad_base64"),
    ({"json": {"instances": [{"b64": base64.b64encode(b"garbage").decode()}]}}, 422, "undecodable_image"),
    ({"json": {"instances": [{"b64": base64.b64encode(png(digit())[:60]).decode()}]}}, 422, "undecodable_image"),
    ({"json": {"instances": [{"b64": base64.b64encode(png(np.full((28, 28), 255, np.uint8))).decode()}]}},
     422, "no_ink"),
    ({"json": {"instances": [{"b64": base64.b64encode(png(np.zeros((30, 28), np.uint8))).decode()}],
               "preprocess": "none"}}, 422, "wrong_image_size"),
    ({"data": b"x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": b"x", "content_type": "image/tiff"}, 415, "unsupported_media_type"),
    ({"data": b"", "content_type": "image/png"}, 400, "empty_body"),
    ({"data": {}, "content_type": "multipart/form-data"}, 422, "invalid_request"),
])
def test_bad_requests_get_a_clear_4xx(client, kwargs, status, code):
    response = predict(client, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"] and "\n" not in error["message"]


def test_errors_name_the_offending_instance(client):
    response = predict(client, {"instances": [ROW, ROW, [1, 2]]})
    error = response.get_json()["error"]
    assert error["details"] == {"instance": 2} and error["message"].startswith("instance 2:")


def test_a_tiff_image_is_unsupported(client):
    buffer = io.BytesIO()
    Image.fromarray(digit()).save(buffer, "TIFF")
    response = predict(client, {"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]})
    assert response.status_code == 415 and response.get_json()["error"]["code"] == "unsupported_image_format"


def test_decompression_bomb_is_refused(client):
    response = predict(client, data=bomb_png(), content_type="image/png")
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "image_too_large"


def test_size_limits(model_dir):
    client = make_app(model_dir, max_batch=3, max_body_bytes=4_000).test_client()
    too_many = predict(client, {"instances": [[0] * 10] * 4})
    assert too_many.status_code == 413 and too_many.get_json()["error"]["code"] == "too_many_instances"
    too_big = predict(client, {"instances": [ROW] * 3})
    assert too_big.status_code == 413 and too_big.get_json()["error"]["code"] == "payload_too_large"
    files = {"file": [(io.BytesIO(png(digit())), f"{i}.png") for i in range(4)]}
    assert predict(client, data=files, content_type="multipart/form-data").status_code == 413


def test_unknown_routes_and_methods(client):
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/predict")
    assert wrong.status_code == 405 and wrong.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_images_are_prepared_by_the_shared_library(client):
    """The service's 28x28 for an uploaded picture is mnist_artifact.preprocess.prepare's, the same
    that `mnist-train predict` uses (tests/trainer/test_cli.py): the two cannot disagree on a file."""
    canvas = Image.new("L", (200, 120), 255)
    ImageDraw.Draw(canvas).line([(20, 20), (70, 100), (90, 30)], fill=0, width=9)
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    for how in ("mnist", "none"):
        photo = buffer.getvalue() if how == "mnist" else png(digit())
        answer = client.post(f"/v1/predict?include_input=true&preprocess={how}", data=photo,
                             content_type="image/png").get_json()
        seen = base64.b64decode(answer["predictions"][0]["input"].split(",", 1)[1])
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(seen))), preprocess.prepare(photo, how))
