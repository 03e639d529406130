"""The HTTP API: predictions, model information, health."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import numpy as np
import orjson
from flask import Blueprint, Response, current_app, g, request

from . import images, metrics, parsing
from .errors import ApiError
from .store import ModelStore

VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() passes "²", which int() refuses

bp = Blueprint("api", __name__)


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                    mimetype="application/json")


def _store() -> ModelStore:
    return current_app.extensions["model_store"]


def model_for_request(store: ModelStore, asked: str | None):
    """The model this request is answered by: ?version=N, else the one serving now."""
    if asked is None:
        model = store.current
        if model is None:
            raise ApiError(503, "model_unavailable", store.not_ready_reason)
        return model
    if not VERSION.fullmatch(asked):  # ASCII digits only, and few of them: int() must not fail
        raise ApiError(422, "invalid_request", f"version must be a positive integer, got {asked[:20]!r}")
    model = store.get(int(asked))
    if model is None:
        raise ApiError(404, "version_not_found", f"model {store.name!r} has no valid version {asked}",
                       {"versions": store.versions()})
    return model


BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _pixels(req, options: parsing.Options) -> tuple[np.ndarray, parsing.Options]:
    """The batch and the options in force (a JSON body may set its own)."""
    content_type = req.mimetype
    if content_type == "application/json" or content_type.endswith("+json"):
        return parsing.parse_json_request(req.get_data(cache=False), options)
    if content_type.startswith("image/"):
        return parsing.parse_image_body(req.get_data(cache=False), content_type, options), options
    if content_type == "multipart/form-data":
        return parsing.parse_uploads([f.read() for f in req.files.getlist("file")], options), options
    raise ApiError(415, "unsupported_media_type",
                   f"unsupported Content-Type {content_type or '(none)'!r}; send application/json, "
                   "an image (image/png, image/jpeg, ...) or multipart/form-data")


@bp.post("/v1/predict")
def predict():
    # The hot path: each context-local proxy (request, g, current_app) is resolved once.
    req, app, state = request._get_current_object(), current_app._get_current_object(), g._get_current_object()
    args = req.args
    model = model_for_request(app.extensions["model_store"], args.get("version"))
    options = app.extensions["parse_options"]
    # JSON bodies carry "preprocess" themselves; image and multipart bodies take it here.
    form = req.form if req.mimetype == "multipart/form-data" else {}
    preprocess = args.get("preprocess") or form.get("preprocess")
    if preprocess is not None:
        if preprocess not in parsing.PREPROCESS:
            raise ApiError(422, "invalid_request", f"preprocess must be one of {list(parsing.PREPROCESS)}")
        options = replace(options, preprocess=preprocess)
    include_input = args.get("include_input") or form.get("include_input")
    if include_input is not None:
        if include_input.lower() not in BOOLEANS:
            raise ApiError(422, "invalid_request", "include_input must be true or false")
        options = replace(options, include_input=BOOLEANS[include_input.lower()])
    pixels, options = _pixels(req, options)
    probabilities = run_model(model, pixels, state)
    predictions = prediction_objects(probabilities, pixels if options.include_input else None)
    return json_response({"model": {"name": model.name, "version": model.version}, "predictions": predictions})


def run_model(model, pixels: np.ndarray, state=None) -> np.ndarray:
    """The forward pass, timed and counted in the metrics and the access line (every route)."""
    started = time.perf_counter()
    probabilities = model.predict_proba(pixels)
    metrics.INFERENCE_LATENCY.observe(time.perf_counter() - started)
    metrics.observe_predictions(probabilities.argmax(axis=1), probabilities.max(axis=1))
    state = state if state is not None else g._get_current_object()
    state.batch_size, state.model_version = len(pixels), model.version
    return probabilities


def prediction_objects(probabilities: np.ndarray, pixels: np.ndarray | None = None) -> list[dict]:
    """{"label", "confidence", "probabilities"} per instance; with pixels, also the "input" the model saw
    (its 28x28 grey levels, rounded, as a PNG data: URL)."""
    labels, confidences = probabilities.argmax(axis=1).tolist(), probabilities.max(axis=1).tolist()
    predictions = [{"label": label, "confidence": conf, "probabilities": p}
                   for label, conf, p in zip(labels, confidences, probabilities)]
    if pixels is not None:
        digits = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, parsing.SIDE, parsing.SIDE)
        for prediction, digit in zip(predictions, digits):
            prediction["input"] = images.png_data_url(digit)
    return predictions


def _summary(model) -> dict:
    m = model.manifest
    metrics_ = {split: {k: v for k, v in values.items() if k in ("accuracy", "loss")}
                for split, values in m.get("metrics", {}).items()}
    return {"version": model.version, "created": m.get("created"), "sha256": model.sha256,
            "architecture": m["architecture"], "metrics": metrics_}


@bp.get("/v1/models")
def models():
    store = _store()
    model = store.current
    return json_response({"models": [{
        "name": store.name, "serving_version": model.version if model else None, "pinned_version": store.pinned,
        "versions": store.versions(), "serving": _summary(model) if model else None}]})


@bp.get("/v1/models/<name>/versions/<int:version>")
def model_version(name: str, version: int):
    store = _store()
    model = store.get(version) if name == store.name else None
    if model is None:
        raise ApiError(404, "version_not_found", f"no valid version {version} of model {name!r}",
                       {"versions": store.versions() if name == store.name else []})
    return json_response(model.manifest)


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    store = _store()
    model = store.current
    if model is None:
        raise ApiError(503, "not_ready", store.not_ready_reason)
    return json_response({"status": "ready", "model": {"name": model.name, "version": model.version}})


@bp.get("/metrics")
def metrics_endpoint():
    body, content_type = metrics.exposition()
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return current_app.response_class(current_app.extensions["openapi"], mimetype="application/json")
