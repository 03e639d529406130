"""The Flask application factory (gunicorn: `mnist_service.app:create_app()`)."""

from __future__ import annotations

import logging
import os
import re
import time
from importlib import resources

from flask import Flask, g, request

from . import errors, logs, metrics, v2, web
from .api import bp
from .parsing import Options
from .settings import Settings
from .store import ModelStore

REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}")  # a caller's id is echoed only if it is this tame


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    store = ModelStore(settings.model_dir, settings.model_name, settings.model_version)
    store.refresh()
    if settings.model_poll_seconds > 0:
        store.start_polling(settings.model_poll_seconds)
    app.extensions.update(settings=settings, model_store=store,
                          parse_options=Options(max_batch=settings.max_batch,
                                                max_image_pixels=settings.max_image_pixels),
                          openapi=resources.files(__package__).joinpath("openapi.json").read_bytes())
    app.register_blueprint(bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(web.bp)
    errors.register(app)
    _observe_requests(app)
    logging.getLogger(__name__).info("app ready", extra={
        "model": settings.model_name, "version": store.current.version if store.current else None})
    return app


def _observe_requests(app: Flask) -> None:
    """Request id, metrics and one JSON log line for every request (never the payload)."""

    @app.before_request
    def start():
        state = g._get_current_object()
        state.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        state.request_id = given if given and REQUEST_ID.fullmatch(given) else os.urandom(16).hex()
        metrics.IN_FLIGHT.inc()

    @app.after_request
    def finish(response):
        state, req = g._get_current_object(), request._get_current_object()
        started = state.get("started")
        if started is None:  # failed before `start` ran
            return response
        latency = time.perf_counter() - started
        metrics.IN_FLIGHT.dec()
        route = req.url_rule.rule if req.url_rule else "unmatched"
        metrics.observe_request(route, req.method, response.status_code, latency)
        response.headers["X-Request-ID"] = state.request_id
        logs.access(request_id=state.request_id, method=req.method, route=route, status=response.status_code,
                    latency_ms=round(latency * 1000, 3), batch_size=state.get("batch_size"),
                    model_version=state.get("model_version"))
        return response
