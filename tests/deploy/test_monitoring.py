"""The monitoring profile's files: Prometheus config and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service_helpers import digit, make_app, write_version

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/mnist-mlp-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (scripts/system-deps)")
        pytest.skip("promtool is not installed (scripts/system-deps)")
    return path


def test_prometheus_config_is_valid(promtool):
    check = subprocess.run([promtool, "check", "config", str(REPO / "docker/prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(_queries())]}]}
    path = tmp_path / "rules.json"  # JSON is YAML: promtool reads it
    path.write_text(json.dumps(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_uses_only_metrics_the_service_exports(tmp_path):
    write_version(tmp_path, 1)
    client = make_app(tmp_path).test_client()
    client.post("/v1/predict", json={"instances": [digit().tolist()]})
    exported = client.get("/metrics").get_data(as_text=True)
    names = {name for expr in _queries() for name in re.findall(r"\bmnist_[a-z_]+", expr)}
    assert names and all(f"\n{name}" in exported or exported.startswith(name) for name in names), names
