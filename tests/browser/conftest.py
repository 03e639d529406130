"""Browser fixtures: Debian's chromium driven by Playwright, a really trained model behind real gunicorn."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

# The browser tests reuse the service tests' helpers (a real gunicorn on loopback).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import Server  # noqa: E402

# Headless in a container or CI runner: no sandbox (often no user namespaces), no GPU, a small /dev/shm,
# and none of the browser's own traffic to the internet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _need(message: str):
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system chromium (scripts/system-deps). Playwright's own browser downloads are never used."""
    path = shutil.which("chromium")
    if path is None:
        _need("chromium is not installed (scripts/system-deps installs Debian's package)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def server(trained_model_dir, tmp_path_factory):
    """mnist-serve (gunicorn, 2 workers) on a loopback port, serving the trained model."""
    metrics_dir = tmp_path_factory.mktemp("metrics")
    server = Server(trained_model_dir, metrics_dir, workers=2)
    yield server
    server.stop(graceful=False)


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the page logged or threw; tests assert it stays empty."""
    return []


@pytest.fixture
def page(browser, server, console_errors):
    """A fresh page at GET / in a desktop-sized window."""
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    page = context.new_page()
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.goto(server.url + "/")
    yield page
    context.close()
