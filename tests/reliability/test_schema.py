"""Case 5: schemathesis against the running server's /openapi.json. It generates requests for every
operation (valid ones and broken ones) and checks that no answer is a 5xx and that every answer has a
documented status, content type, headers and body schema."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.reliability

CONFIG = Path(__file__).with_name("schemathesis.toml")
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",  # every status is documented for its operation
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # a request the schema forbids is refused with a 4xx
    "unsupported_method",  # other methods get 405
]
# Not positive_data_acceptance: JSON Schema cannot say that N*784 values must follow a shape of
# [N, 784], nor that a base64 string must hold a picture of a digit, so the schema admits requests
# the service rightly refuses.
SEED = int(os.environ.get("RELIABILITY_SEED", "1"))  # fixed: CI sends the same requests every run
MAX_EXAMPLES = 40  # per operation and phase: about 1,700 requests, 15 s


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(model_dir, serve, figures, tmp_path):
    case = "5 schemathesis"
    server = serve(model_dir)
    reports = tmp_path / "schemathesis"
    # One schemathesis worker: with two threads, CPython 3.11's ast.parse (which Hypothesis calls to
    # describe strategies) fails at random with "AST constructor recursion depth mismatch".
    argv = [str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run",
            server.url + "/openapi.json", "--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED), "--workers", "1", "--request-timeout", "10", "--no-color",
            "--generation-database", "none", "--report", "json,ndjson", "--report-dir", str(reports)]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    print(run.stdout, run.stderr, sep="\n")
    summary = json.loads(next(reports.glob("json-*.json")).read_text())
    per_operation, statuses = _requests(next(reports.glob("ndjson-*.ndjson")))

    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    # schemathesis skips the operation that serves the document it tests: it loads it instead.
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item
                  if path != "/openapi.json"}
    figures.add(case, "seed", SEED)
    figures.add(case, "test cases generated", summary["test_cases"]["generated"])
    figures.add(case, "requests sent", sum(sum(c.values()) for c in per_operation.values()))
    figures.add(case, "operations tested", f"{len(operations & set(per_operation))} of {len(operations)} "
                                           "(+ GET /openapi.json, the document it loads)")
    figures.add(case, "fewest requests to one operation", min(sum(per_operation[op].values()) for op in operations))
    figures.add(case, "answers by status", ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items())))
    figures.add(case, "failures / errors", f"{summary['test_cases']['with_failures']} / {len(summary['errors'])}")

    assert run.returncode == 0, "schemathesis found failures or errors: see its output above"
    assert summary["test_cases"]["generated"] >= 1000
    assert operations <= set(per_operation), operations - set(per_operation)
    assert all(100 <= status < 500 for status in statuses), statuses  # 0: no answer at all


def _requests(ndjson: Path) -> tuple[dict[str, collections.Counter], collections.Counter]:
    """The requests schemathesis sent, by operation ("METHOD /path/{template}") and status, from its
    event stream (other methods, sent by unsupported_method, are counted under their own method)."""
    per_operation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    statuses: collections.Counter = collections.Counter()
    with open(ndjson) as events:
        for line in events:
            event = json.loads(line).get("ScenarioFinished")
            if not event:
                continue
            recorder = event["recorder"]
            for case_id, interaction in (recorder.get("interactions") or {}).items():
                case = recorder["cases"][case_id]["value"]
                status = (interaction.get("response") or {}).get("status_code", 0)  # 0: no answer
                per_operation[f"{case['method'].upper()} {case['path']}"][status] += 1
                statuses[status] += 1
    return per_operation, statuses
