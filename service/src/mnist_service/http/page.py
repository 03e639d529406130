"""The draw-a-digit page at GET /: static files from the package, no build step, works offline.

The page's JavaScript and CSS are served by Flask's own static route (/static/...) from this
package's static/ folder; every one of those responses carries the headers below.
"""

from flask import Blueprint, current_app, request

blueprint = Blueprint("page", __name__)

PAGE_ENDPOINTS = frozenset({"page.index", "static"})
# Nothing inline and nothing from elsewhere: scripts, styles and fetches come from this origin only;
# images may also be data: URLs (the 28x28 input the API sends back).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blueprint.get("/")
def index():
    return current_app.send_static_file("index.html")


@blueprint.after_app_request
def secure_page(response):
    # after_app_request, not after_request: the static route belongs to the app, not this blueprint.
    if request.endpoint in PAGE_ENDPOINTS:
        response.headers.update(SECURITY_HEADERS)
    return response
