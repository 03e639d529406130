"""The control plane, Flask views: health, readiness, model metadata (v1 and v2), metrics, OpenAPI.

Inference is answered in front of Flask (router.py, routes.py).
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app

from .. import metrics
from ..dataplane.inference import check_name, pick_model
from ..dataplane.metadata import MODEL_METADATA, SERVER
from ..dataplane.store import ModelStore
from ..errors import ApiError

blueprint = Blueprint("control", __name__)


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


# -- v1 and operations --------------------------------------------------------------------------

@blueprint.get("/v1/models")
def models():
    store = _store()
    routing = store.routing
    model = routing.default if routing else None
    return json_response({"models": [{
        "name": store.name, "serving_version": model.version if model else None, "pinned_version": store.pinned,
        "versions": store.versions(), "serving": _summary(model) if model else None,
        "labels": {label: m.version for label, m in routing.labels.items()} if routing else {},
        "canary_percent": routing.canary_percent if routing else 0.0}]})


@blueprint.get("/v1/models/<name>/versions/<int:version>")
def model_version(name: str, version: int):
    return json_response(pick_model(_store(), name, str(version)).model.manifest)


@blueprint.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    store = _store()
    model = store.current
    if model is None:
        raise ApiError(503, "not_ready", store.not_ready_reason)
    return json_response({"status": "ready", "model": {"name": model.name, "version": model.version}})


@blueprint.get("/metrics")
def metrics_endpoint():
    body, content_type = metrics.exposition()
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)


@blueprint.get("/openapi.json")
def openapi():
    return current_app.response_class(current_app.extensions["openapi"], mimetype="application/json")


# -- Open Inference Protocol v2: health and metadata -------------------------------------------

@blueprint.get("/v2")
def server_metadata():
    return json_response(SERVER)


@blueprint.get("/v2/health/live")
def server_live():
    return json_response({"live": True})


@blueprint.get("/v2/health/ready")
def server_ready():
    store = _store()
    if store.current is None:
        return json_response({"ready": False, "error": store.not_ready_reason}, 503)
    return json_response({"ready": True})


@blueprint.get("/v2/models/<name>")
@blueprint.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    store = _store()
    if version is None:
        check_name(store, name)  # metadata needs no loaded model: it describes the interface
    else:
        pick_model(store, name, version)
    return json_response({"name": store.name, "versions": [str(v) for v in store.versions()], **MODEL_METADATA})


@blueprint.get("/v2/models/<name>/ready")
@blueprint.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    pick_model(_store(), name, version)
    return json_response({"name": name, "ready": True})
