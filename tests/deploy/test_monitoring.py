"""The monitoring profile's files: Prometheus config, its alerting rules and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from service_helpers import digit, make_app, write_version

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/mnist-mlp-dashboard.json"
CONFIG = REPO / "docker/prometheus.yml"
RULES = REPO / "docker/prometheus-rules.yml"
RULES_TESTS = REPO / "tests/deploy/prometheus-rules-test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (scripts/system-deps)")
        pytest.skip("promtool is not installed (scripts/system-deps)")
    return path


def test_prometheus_config_is_valid(promtool):
    check = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout, check.stdout  # and checks docker/prometheus-rules.yml


def test_alerting_rules_are_valid(promtool):
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_alerting_rules_pass_their_unit_tests(promtool):
    # Canary at 5 % errors vs stable at 0 % fires, equal rates do not, a confidence drop, rejected labels.
    test = subprocess.run([promtool, "test", "rules", str(RULES_TESTS)], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    tested = {case["alertname"] for group in yaml.safe_load(RULES_TESTS.read_text())["tests"]
              for case in group.get("alert_rule_test", [])}
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    assert alerts == tested, "every alert has a unit test"


def test_compose_mounts_the_rules_where_the_config_expects_them():
    """Prometheus reads rule_files relative to its config file's folder: docker/ here, and in the
    container the folder of --config.file, where the compose file must mount the same files."""
    prometheus = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["prometheus"]
    config_file = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    mounts = {target: (REPO / source).resolve()
              for source, target, *_ in (volume.split(":") for volume in prometheus["volumes"])}
    rule_files = yaml.safe_load(CONFIG.read_text())["rule_files"]
    assert rule_files
    assert mounts[config_file] == CONFIG
    for rule_file in rule_files:
        assert (CONFIG.parent / rule_file).resolve() == RULES
        assert mounts[str(PurePosixPath(config_file).parent / rule_file)] == RULES


def _queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    panels += [inner for panel in panels for inner in panel.get("panels", [])]  # a collapsed row holds its panels
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]  # a row has none


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
    write_version(tmp_path, 2)
    # A stable and a canary label, and one the service ignores: every label metric then has a sample.
    (tmp_path / "mnist/labels.json").write_text(json.dumps({
        "format_version": 1, "labels": {"stable": 1, "canary": 2, "gone": 9}, "canary_percent": 50}))
    client = make_app(tmp_path).test_client()
    client.post("/v1/predict", json={"instances": [digit().tolist()]})
    exported = client.get("/metrics").get_data(as_text=True)
    names = {name for expr in _queries() for name in re.findall(r"\bmnist_[a-z_]+", expr)}
    assert names and all(f"\n{name}" in exported or exported.startswith(name) for name in names), names
