"""HTTP: the WSGI app gunicorn runs (app.py's create_app). A request meets, outermost first:

    observe.py      request id, metrics, one access line
    body_limit.py   MAX_BODY_BYTES for chunked bodies
    cors.py         cross-origin requests (CORS_ORIGINS)
    api_keys.py     API keys (API_KEYS_FILE)
    router.py       the inference routes of routes.py, decoded by codecs/ and run by dataplane/
    Flask           everything else: control.py (health, metadata, metrics, OpenAPI), page.py (GET /)

router.py reads each inference request as request.py's InferenceRequest; responses.py writes
their answers and errors.
"""
