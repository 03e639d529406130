"""The inference routes: each decodes its request with its codec (codecs/), then picks, runs and
records the model the same way (dataplane/inference.py). Served by router.py, not by Flask."""

from __future__ import annotations

import re
from dataclasses import replace

import orjson

from .. import access
from ..codecs import v1, v2
from ..dataplane import explain
from ..dataplane.inference import Picked, pick_model, run_model
from ..dataplane.options import RequestOptions, check_explained, read_options
from .request import InferenceRequest as Request
from .responses import JSON_HEADER
from .router import Context, Route, match_route


def _pick(req: Request, context: Context, name: str | None = None, version: str | None = None,
          label: str | None = None) -> Picked:
    """The model for this request (a client's X-Client-Id keeps it on one side of a canary split),
    noted for the access line and the per-version metrics, errors included."""
    picked = pick_model(context.store, name, version, label, req.environ.get("HTTP_X_CLIENT_ID"))
    access.note(req.environ, model_version=picked.model.version, model_label=picked.label)
    return picked


def _answer(picked: Picked, pixels, options: RequestOptions, req: Request, context: Context) -> tuple[bytes, list]:
    """Run the model and answer {"model", "predictions"}, each prediction explained if asked."""
    if options.explain:
        check_explained(len(pixels), context.limits)
    probabilities = run_model(picked, pixels, req.environ, context.drift)
    predictions = v1.prediction_objects(probabilities, pixels if options.include_input else None)
    if options.explain:
        explanations = explain.explanation_objects(picked.model, pixels, probabilities, options.explain,
                                                   options.target, options.steps)
        for prediction, explanation in zip(predictions, explanations):
            prediction["explanation"] = explanation
    model = {"name": picked.model.name, "version": picked.model.version}
    if picked.label:
        model["label"] = picked.label
    return orjson.dumps({"model": model, "predictions": predictions},
                        option=orjson.OPT_SERIALIZE_NUMPY), [JSON_HEADER, *picked.headers()]


def predict(req: Request, context: Context) -> tuple[bytes, list]:
    """POST /v1/predict: JSON instances, an image body or multipart files; "explain" adds attributions."""
    picked = _pick(req, context, version=v1.version_asked(req), label=v1.label_asked(req))
    pixels, options = v1.decode_predict(req, context.limits)
    return _answer(picked, pixels, options, req, context)


def explain_route(req: Request, context: Context, name: str, version: str | None = None) -> tuple[bytes, list]:
    """POST /v1/models/<name>[/versions/<v>]:explain: the body of :predict, every prediction explained
    (integrated gradients unless "explain" names another method)."""
    picked = _pick(req, context, name, version)
    pixels, options = v1.decode_json(req.body(), context.limits, read_options(req.args))
    return _answer(picked, pixels, replace(options, explain=options.explain or explain.DEFAULT_METHOD), req, context)


def infer(req: Request, context: Context, name: str, version: str | None = None) -> tuple[bytes, list]:
    """POST /v2/models/<name>[/versions/<version>]/infer: the Open Inference Protocol."""
    picked = _pick(req, context, name, version)
    request = v2.InferRequest(req.body(), req.environ.get(v2.HEADER_LENGTH_KEY), context.limits)
    access.note(req.environ, inference_id=request.id)
    probabilities = run_model(picked, request.pixels, req.environ, context.drift)
    body, headers = v2.encode_response(picked.model, request, probabilities)
    return body, [*headers, *picked.headers()]


def tf_serving_predict(req: Request, context: Context, name: str, version: str | None = None,
                       label: str | None = None) -> tuple[bytes, list]:
    """POST /v1/models/<name>[/versions/<v> | /labels/<label>]:predict: TF Serving's REST predict. A
    JSON body as /v1/predict takes it (any Content-Type, as TF Serving accepts `curl -d`), answered
    {"predictions": [...]} with /v1/predict's predictions."""
    picked = _pick(req, context, name, version, label)
    pixels, options = v1.decode_json(req.body(), context.limits, read_options(req.args))
    probabilities = run_model(picked, pixels, req.environ, context.drift)
    predictions = v1.prediction_objects(probabilities, pixels if options.include_input else None)
    body = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    return body, [JSON_HEADER, *picked.headers()]


def _exact(path: str):
    return lambda candidate: {} if candidate == path else None


def _pattern(regex: str):
    compiled = re.compile(regex)
    return lambda candidate: (m.groupdict() if (m := compiled.fullmatch(candidate)) else None)


NAME, VERSION, TF_NAME = r"(?P<name>[^/]+)", r"(?P<version>[^/]+)", r"(?P<name>[^/:]+)"
ROUTES = [  # the hot route first: it is matched by one string comparison
    Route("/v1/predict", _exact("/v1/predict"), predict),
    Route("/v2/models/<name>/infer", _pattern(rf"/v2/models/{NAME}/infer"), infer),
    Route("/v2/models/<name>/versions/<version>/infer", _pattern(rf"/v2/models/{NAME}/versions/{VERSION}/infer"),
          infer),
    Route("/v1/models/<name>:predict", _pattern(rf"/v1/models/{TF_NAME}:predict"), tf_serving_predict),
    Route("/v1/models/<name>/versions/<int:version>:predict",
          _pattern(rf"/v1/models/{TF_NAME}/versions/(?P<version>[0-9]+):predict"), tf_serving_predict),
    Route("/v1/models/<name>/labels/<label>:predict",
          _pattern(rf"/v1/models/{TF_NAME}/labels/(?P<label>[^/:]+):predict"), tf_serving_predict),
    Route("/v1/models/<name>:explain", _pattern(rf"/v1/models/{TF_NAME}:explain"), explain_route),
    Route("/v1/models/<name>/versions/<int:version>:explain",
          _pattern(rf"/v1/models/{TF_NAME}/versions/(?P<version>[0-9]+):explain"), explain_route),
]


def inference_rule(path: str) -> str | None:
    """The rule of the inference route `path` is for, or None for any other path."""
    matched = match_route(ROUTES, path)
    return matched[0].rule if matched else None
