"""The Flask application factory (gunicorn: `mnist_service.http.app:create_app()`): the middleware
in the order a request meets it (http/__init__.py) around the router and the Flask app."""

from __future__ import annotations

import logging
from importlib import resources

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from .. import access, logs
from ..dataplane.drift import DriftMonitor
from ..dataplane.options import Limits
from ..dataplane.store import open_store
from ..keys import ApiKeys
from ..payloads import open_payload_log
from ..settings import Settings
from . import control, page
from .api_keys import RequireApiKey
from .body_limit import ChunkedBodyLimit
from .cors import Cors
from .observe import ObservedRequests
from .responses import register_error_handlers
from .router import Context, Router
from .routes import ROUTES, inference_rule


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    store = open_store(settings)
    app.extensions.update(settings=settings, model_store=store,
                          openapi=resources.files(__package__).joinpath("openapi.json").read_bytes())
    app.register_blueprint(control.blueprint)
    app.register_blueprint(page.blueprint)
    register_error_handlers(app)

    @app.before_request
    def note_route():
        access.note(request.environ, route=request.url_rule.rule if request.url_rule else "unmatched")

    context = Context(store, Limits.of(settings), DriftMonitor(settings.drift_window))
    served = Router(ROUTES, app.wsgi_app, context, settings.max_body_bytes)
    if settings.api_keys_file:
        served = RequireApiKey(served, ApiKeys(settings.api_keys_file), _route_namer(app))
    if settings.cors_origins:
        served = Cors(served, settings.cors_origins)  # outside the keys: a preflight carries none
    payload_log = app.extensions["payload_log"] = open_payload_log(settings)  # gunicorn_config closes it
    app.wsgi_app = ObservedRequests(ChunkedBodyLimit(served, settings.max_body_bytes), payload_log,
                                    frozenset(route.rule for route in ROUTES))
    logging.getLogger(__name__).info("app ready", extra={
        "model": settings.model_name, "version": store.current.version if store.current else None})
    return app


def _route_namer(app: Flask):
    """path, method -> the route's rule (as metrics name routes), without running the request."""
    adapter = app.url_map.bind("localhost")

    def route_of(path: str, method: str) -> str:
        rule = inference_rule(path)
        if rule is not None:
            return rule
        try:
            return adapter.match(path, method, return_rule=True)[0].rule
        except HTTPException:
            return "unmatched"

    return route_of
