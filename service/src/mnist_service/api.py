"""The HTTP API: predictions, model information, health."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
from flask import Blueprint, Response, current_app, g, request

from . import metrics, parsing
from .errors import ApiError
from .store import ModelStore

bp = Blueprint("api", __name__)


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                    mimetype="application/json")


def _store() -> ModelStore:
    return current_app.extensions["model_store"]


def _model_for_request(store: ModelStore, asked: str | None):
    """The model this request is answered by: ?version=N, else the one serving now."""
    if asked is None:
        model = store.current
        if model is None:
            raise ApiError(503, "model_unavailable", store.not_ready_reason)
        return model
    if not asked.isdigit():
        raise ApiError(422, "invalid_request", f"version must be a positive integer, got {asked!r}")
    model = store.get(int(asked))
    if model is None:
        raise ApiError(404, "version_not_found", f"model {store.name!r} has no valid version {asked}",
                       {"versions": store.versions()})
    return model


def _pixels(req, options: parsing.Options):
    content_type = req.mimetype
    if content_type == "application/json" or content_type.endswith("+json"):
        return parsing.parse_json(req.get_data(cache=False), options)
    if content_type.startswith("image/"):
        return parsing.parse_image_body(req.get_data(cache=False), content_type, options)
    if content_type == "multipart/form-data":
        return parsing.parse_uploads([f.read() for f in req.files.getlist("file")], options)
    raise ApiError(415, "unsupported_media_type",
                   f"unsupported Content-Type {content_type or '(none)'!r}; send application/json, "
                   "an image (image/png, image/jpeg, ...) or multipart/form-data")


@bp.post("/v1/predict")
def predict():
    # The hot path: each context-local proxy (request, g, current_app) is resolved once.
    req, app, state = request._get_current_object(), current_app._get_current_object(), g._get_current_object()
    args = req.args
    model = _model_for_request(app.extensions["model_store"], args.get("version"))
    options = app.extensions["parse_options"]
    # JSON bodies carry "preprocess" themselves; image and multipart bodies take it here.
    form = req.form if req.mimetype == "multipart/form-data" else {}
    preprocess = args.get("preprocess") or form.get("preprocess")
    if preprocess is not None:
        if preprocess not in parsing.PREPROCESS:
            raise ApiError(422, "invalid_request", f"preprocess must be one of {list(parsing.PREPROCESS)}")
        options = replace(options, preprocess=preprocess)
    pixels = _pixels(req, options)

    started = time.perf_counter()
    probabilities = model.predict_proba(pixels)
    metrics.INFERENCE_LATENCY.observe(time.perf_counter() - started)
    labels, confidences = probabilities.argmax(axis=1), probabilities.max(axis=1)
    metrics.observe_predictions(labels, confidences)
    state.batch_size, state.model_version = len(pixels), model.version

    predictions = [{"label": label, "confidence": conf, "probabilities": p}
                   for label, conf, p in zip(labels.tolist(), confidences.tolist(), probabilities)]
    return json_response({"model": {"name": model.name, "version": model.version}, "predictions": predictions})


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
