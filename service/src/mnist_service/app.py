"""The Flask application factory (gunicorn: `mnist_service.app:create_app()`)."""

from __future__ import annotations

import logging
from importlib import resources

from flask import Flask, request

from . import errors, logs, observe, v2, web
from .api import bp
from .body_limit import ChunkedBodyLimit
from .parsing import Options
from .predict import PredictRoute
from .settings import Settings
from .store import ModelStore


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    store = ModelStore(settings.model_dir, settings.model_name, settings.model_version)
    store.refresh()
    if settings.model_poll_seconds > 0:
        store.start_polling(settings.model_poll_seconds)
    options = Options(max_batch=settings.max_batch, max_image_pixels=settings.max_image_pixels)
    app.extensions.update(settings=settings, model_store=store, parse_options=options,
                          openapi=resources.files(__package__).joinpath("openapi.json").read_bytes())
    app.register_blueprint(bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(web.bp)
    errors.register(app)

    @app.before_request
    def note_route():
        observe.note(request.environ, route=request.url_rule.rule if request.url_rule else "unmatched")

    # POST /v1/predict is answered before Flask's request cycle; every request is observed.
    routes = PredictRoute(app.wsgi_app, store, options, settings.max_body_bytes)
    app.wsgi_app = observe.ObservedRequests(ChunkedBodyLimit(routes, settings.max_body_bytes))
    logging.getLogger(__name__).info("app ready", extra={
        "model": settings.model_name, "version": store.current.version if store.current else None})
    return app
