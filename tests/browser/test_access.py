"""Who may ask, in a real browser: the page asks for an API key when the service answers 401 and
keeps it for the tab; a page on another origin may call the API only if CORS_ORIGINS lists it."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from service_helpers import Server, free_port

PREDICTION, KEY, USE_KEY = '[data-testid="prediction"]', '[data-testid="api-key"]', '[data-testid="use-key"]'
ANSWERED = """() => /^[0-9]$/.test(document.querySelector('[data-testid="prediction"]').textContent)"""


@pytest.fixture
def start_server(trained_model_dir, tmp_path):
    servers = []

    def start(**env) -> Server:
        metrics_dir = tmp_path / f"metrics-{len(servers)}"
        metrics_dir.mkdir()
        servers.append(Server(trained_model_dir, metrics_dir, workers=1, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop(graceful=False)


def draw_a_stroke(page) -> None:
    box = page.locator('[data-testid="digit-canvas"]').bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=12)
    page.mouse.up()


def test_the_page_asks_for_a_key_and_keeps_it_for_the_tab(browser, start_server, tmp_path, console_errors):
    keys = tmp_path / "keys"
    keys.write_text("right-key\n")
    server = start_server(API_KEYS_FILE=keys)
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/")  # the page itself is open
    draw_a_stroke(page)
    page.wait_for_selector(KEY, state="visible")
    assert page.text_content(PREDICTION) == "–"

    page.fill(KEY, "wrong-key")
    page.click(USE_KEY)
    page.wait_for_function("() => document.getElementById('status').textContent.includes('refused')")
    assert page.is_visible(KEY)

    page.fill(KEY, "right-key")
    with page.expect_response("**/v1/predict") as response:
        page.click(USE_KEY)
    assert response.value.status == 200
    page.wait_for_function(ANSWERED)
    assert page.is_hidden(KEY)
    assert page.evaluate("sessionStorage.getItem('mnist-mlp-api-key')") == "right-key"
    assert page.evaluate("localStorage.length") == 0  # nothing outlives the tab

    page.reload()  # the same tab: no question
    draw_a_stroke(page)
    page.wait_for_function(ANSWERED)
    assert page.is_hidden(KEY)
    context.close()

    other_tab = browser.new_context().new_page()  # another session asks again
    other_tab.goto(server.url + "/")
    draw_a_stroke(other_tab)
    other_tab.wait_for_selector(KEY, state="visible")
    other_tab.context.close()


CALLER = """<!doctype html><meta charset="utf-8"><title>another site</title>
<script type="module">
try {
  const response = await fetch("API/v1/predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                                 body: JSON.stringify({instances: [new Array(784).fill(0)]})});
  const body = await response.json();
  document.title = `answered ${body.predictions[0].label} by v${response.headers.get("X-Model-Version")}`;
} catch (error) {
  document.title = `blocked: ${error.name}`;
}
</script>"""


@pytest.fixture
def other_sites(tmp_path):
    """Static sites on other loopback ports; site(api_url) serves a page there that calls the API."""
    sites = []

    def site() -> tuple[str, callable]:
        root = tmp_path / f"site-{len(sites)}"
        root.mkdir()
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        sites.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", root

    yield site
    for httpd in sites:
        httpd.shutdown()


def caller_title(browser, origin: str) -> str:
    page = browser.new_context().new_page()
    page.goto(origin + "/index.html")
    page.wait_for_function("() => /^(answered|blocked)/.test(document.title)")
    title = page.title()
    page.context.close()
    return title


def test_a_page_on_a_listed_origin_may_call_the_api_and_others_may_not(browser, start_server, other_sites):
    (allowed, allowed_root), (refused, refused_root) = other_sites(), other_sites()
    server = start_server(CORS_ORIGINS=allowed)
    for root in (allowed_root, refused_root):
        (root / "index.html").write_text(CALLER.replace("API", server.url))
    assert caller_title(browser, allowed).endswith(" by v1")  # read the body and the exposed header
    assert caller_title(browser, refused) == "blocked: TypeError"  # the preflight was answered 403
