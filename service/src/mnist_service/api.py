"""The HTTP API's Flask routes: model information, health, metrics, OpenAPI (predictions: predict.py)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app

from . import metrics
from .errors import ApiError
from .store import ModelStore

bp = Blueprint("api", __name__)


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                    mimetype="application/json")


def _store() -> ModelStore:
    return current_app.extensions["model_store"]


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
