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

from mnist_service.http.app import create_app
from mnist_service.settings import Settings
from service_helpers import add_profile, digit, varied_digits, write_version

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
    # Canary at 5 % errors vs stable at 0 % fires, equal rates do not, a confidence drop, rejected labels,
    # input drift above 0.25 (not a short burst), payload events dropped or failed (not a single loss).
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
    models = tmp_path / "models"
    for version in (1, 2):
        add_profile(write_version(models, version), varied_digits(10))
    # A stable and a canary label, and one the service ignores: every label metric then has a sample.
    (models / "mnist/labels.json").write_text(json.dumps({
        "format_version": 1, "labels": {"stable": 1, "canary": 2, "gone": 9}, "canary_percent": 50}))
    # Payload logging (into files) and drift scores are off by default, and their metrics have no
    # sample until they are on: on here, with a window that one request fills. The variables are
    # the service's documented interface, which the chart and the compose file set too.
    app = create_app(Settings.from_env({
        "MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0",
        "PAYLOAD_LOG_URL": str(tmp_path / "payloads"), "DRIFT_WINDOW": "4"}))
    try:
        client = app.test_client()
        client.post("/v1/predict", json={"instances": [digit(seed).tolist() for seed in range(4)]})
        exported = client.get("/metrics").get_data(as_text=True)
    finally:
        if (payload_log := app.extensions.get("payload_log")) is not None:
            payload_log.close(5)
    names = {name for expr in _queries() for name in re.findall(r"\bmnist_[a-z_]+", expr)}
    missing = sorted(name for name in names if f"\n{name}" not in exported and not exported.startswith(name))
    assert names and not missing, f"the dashboard queries metrics the service does not export: {missing}"
