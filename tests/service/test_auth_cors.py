"""API keys and CORS through a real mnist-serve: open routes stay open, every other route refuses a
request without a valid key, keys rotate while serving; listed origins get CORS answers, others not."""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import resources

import pytest
import requests

from mnist_service.keys import RELOAD_SECONDS
from service_helpers import digit, metric_total, wait_for, write_version

BODY = {"instances": [digit().tolist()]}
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/static/app.js", "/v2", "/v2/health/live",
        "/v2/health/ready"]


def documented_requests() -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document, its parameters filled in."""
    spec = json.loads(resources.files("mnist_service.http").joinpath("openapi.json").read_text())
    filled = {"{name}": "mnist", "{version}": "1", "{label}": "stable"}
    requests_ = []
    for path, operations in spec["paths"].items():
        for parameter, value in filled.items():
            path = path.replace(parameter, value)
        requests_ += [(method.upper(), path) for method in operations]
    return requests_


@pytest.fixture
def keyed(tmp_path, serve):
    """A server with API keys: one in clear, one given as its SHA-256 digest."""
    write_version(tmp_path, 1)
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated monthly\nfirst-key\nsha256:{hashlib.sha256(b'second-key').hexdigest()}\n")
    server = serve(tmp_path, API_KEYS_FILE=keys, CORS_ORIGINS="http://127.0.0.1:1")
    return server, keys


def test_open_routes_need_no_key(keyed):
    server, _ = keyed
    for path in OPEN:
        assert requests.get(server.url + path, timeout=5).status_code == 200, path


def test_every_other_route_refuses_a_request_without_a_valid_key(keyed):
    server, _ = keyed
    protected = [(method, path) for method, path in documented_requests() if path not in OPEN]
    assert len(protected) >= 12  # inference, v2 and TF Serving routes, model metadata
    for method, path in protected:
        for headers, reason in (({}, "missing"), ({"Authorization": "Bearer wrong"}, "invalid"),
                                ({"X-API-Key": "first-key2"}, "invalid"),
                                ({"Authorization": "Basic first-key"}, "missing")):
            answer = requests.request(method, server.url + path, json=BODY, headers=headers, timeout=5)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            error = answer.json()["error"]
            message = error if isinstance(error, str) else error["message"]
            assert message.startswith(reason) and "first-key" not in answer.text and "second" not in answer.text
    assert metric_total(server.url, "mnist_auth_failures_total", route="/v1/predict", reason="missing") == 2
    logged = "\n".join(map(str, server.logs()))
    assert "refused a request without a valid API key" in logged and "first-key" not in logged


def test_both_key_forms_and_both_headers_are_accepted(keyed):
    server, _ = keyed
    for headers in ({"Authorization": "Bearer first-key"}, {"X-API-Key": "first-key"},
                    {"Authorization": "bearer second-key"}, {"X-API-Key": "second-key"}):
        answer = requests.post(server.url + "/v1/predict", json=BODY, headers=headers, timeout=5)
        assert answer.status_code == 200, headers
        assert requests.get(server.url + "/v1/models", headers=headers, timeout=5).status_code == 200


def test_keys_rotate_while_serving(keyed):
    server, keys = keyed

    def status(key: str) -> int:
        return requests.post(server.url + "/v1/predict", json=BODY, headers={"X-API-Key": key}, timeout=5).status_code

    assert status("third-key") == 401
    staged = keys.with_suffix(".new")
    staged.write_text("first-key\nthird-key\n")
    os.replace(staged, keys)  # as a Secret update lands: a new file in place of the old
    assert wait_for(lambda: all(status("third-key") == 200 for _ in range(10)), timeout=10)  # every worker
    assert status("second-key") == 401 and status("first-key") == 200
    # An empty file would lock everyone out: each worker keeps the last keys it read. A worker that
    # took no request since the rotation still holds the first set, so test a key both sets share.
    keys.write_text("")
    time.sleep(RELOAD_SECONDS * 1.5)  # past the reload interval: every request now looks at the file
    assert all(status("first-key") == 200 for _ in range(10))


def test_a_listed_origin_gets_cors_answers_and_others_do_not(keyed):
    server, _ = keyed
    allowed, other = "http://127.0.0.1:1", "http://evil.example"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    answer = requests.options(server.url + "/v1/predict", headers={"Origin": allowed, **preflight}, timeout=5)
    assert answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    refused = requests.options(server.url + "/v1/predict", headers={"Origin": other, **preflight}, timeout=5)
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers

    for origin, expected in ((allowed, allowed), (other, None)):
        answer = requests.post(server.url + "/v1/predict", json=BODY,
                               headers={"Origin": origin, "X-API-Key": "first-key"}, timeout=5)
        assert answer.status_code == 200 and answer.headers.get("Access-Control-Allow-Origin") == expected
        if expected:  # the page may read which model answered
            assert "X-Model-Version" in answer.headers["Access-Control-Expose-Headers"]
    unauthorised = requests.post(server.url + "/v1/predict", json=BODY, headers={"Origin": allowed}, timeout=5)
    assert unauthorised.status_code == 401  # and the page can read why:
    assert unauthorised.headers["Access-Control-Allow-Origin"] == allowed


def test_without_settings_everything_is_as_before(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path)
    assert requests.post(server.url + "/v1/predict", json=BODY, timeout=5).status_code == 200
    preflight = requests.options(server.url + "/v1/predict", timeout=5, headers={
        "Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 405 and "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize("variable, value, message", [
    ("API_KEYS_FILE", "/nonexistent/keys", "cannot read"),
    ("API_KEYS_FILE", "EMPTY", "no keys"),
    ("CORS_ORIGINS", "example.com", "is not an origin"),
])
def test_bad_settings_are_one_line(tmp_path, variable, value, message):
    from mnist_service.settings import Settings

    if value == "EMPTY":
        value = str(tmp_path / "empty")
        (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=message) as error:
        Settings.from_env({variable: value})
    assert "\n" not in str(error.value) and variable in str(error.value)
