"""POST /v1/predict: JSON instances, raw image bodies and multipart uploads to predictions.

The hot route is a plain WSGI app in front of Flask (`app.wsgi_app`): werkzeug's Request parses
the request as Flask's would, but Flask's request cycle (contexts, routing, hooks, Response objects)
costs more per request than everything this service adds (bench/README.md, "Service"). Requests
for any other path go on to Flask; errors have the same JSON form as Flask's handlers give them.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from http import HTTPStatus

import numpy as np
import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Request

from . import errors, images, metrics, observe, parsing
from .errors import ApiError
from .store import ModelStore

PATH = "/v1/predict"
VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() passes "²", which int() refuses
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
JSON_HEADER = ("Content-Type", "application/json")


class PredictRoute:
    """Answers PATH itself and hands every other request to `fallback` (the Flask app)."""

    def __init__(self, fallback, store: ModelStore, options: parsing.Options, max_body_bytes: int):
        self.fallback, self.store, self.options, self.max_body_bytes = fallback, store, options, max_body_bytes

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            return self.fallback(environ, start_response)
        observe.note(environ, route=PATH)
        headers = []
        try:
            status, body = 200, self.predict(environ)
        except ApiError as e:
            status, body = e.status, errors.error_body(e.code, e.message, e.details)
        except HTTPException as e:  # 405, and 413 from werkzeug's body limit
            status, (body, headers) = e.code, errors.http_error(e, PATH)
        except Exception:
            status, body = 500, errors.internal_error()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [JSON_HEADER, ("Content-Length", str(len(body))), *headers])
        return [body]

    def predict(self, environ) -> bytes:
        req = Request(environ)
        req.max_content_length = self.max_body_bytes
        if req.method != "POST":
            raise MethodNotAllowed(["POST"])
        args = req.args
        model = model_for_request(self.store, args.get("version"))
        options = self._options(args, req.form if req.mimetype == "multipart/form-data" else {})
        pixels, options = _pixels(req, options)
        probabilities = run_model(model, pixels, environ)
        predictions = prediction_objects(probabilities, pixels if options.include_input else None)
        return orjson.dumps({"model": {"name": model.name, "version": model.version}, "predictions": predictions},
                            option=orjson.OPT_SERIALIZE_NUMPY)

    def _options(self, args, form) -> parsing.Options:
        """JSON bodies carry "preprocess" and "include_input" themselves; image and multipart bodies
        take them from the query string or a form field."""
        options = self.options
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
        return options


def _pixels(req: Request, options: parsing.Options) -> tuple[np.ndarray, parsing.Options]:
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


def run_model(model, pixels: np.ndarray, environ: dict) -> np.ndarray:
    """The forward pass, timed and counted in the metrics and the access line (every route)."""
    started = time.perf_counter()
    probabilities = model.predict_proba(pixels)
    metrics.INFERENCE_LATENCY.observe(time.perf_counter() - started)
    metrics.observe_predictions(probabilities.argmax(axis=1), probabilities.max(axis=1))
    observe.note(environ, batch_size=len(pixels), model_version=model.version)
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
