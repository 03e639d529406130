"""Where one single-instance /v1/predict request spends its time inside mnist-serve, in-process: the
steps every server shares, each feature switched off in turn, and the bare app. Prints JSON.

    .venv/bin/python -m bench.service.profile_request MODEL_DIR BODY_JSON [--name mnist] [--iterations 3000]

Run by bench/service/throughput.py; what each figure is, in bench/README.md ("Service").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def per_call_us(fn, iterations: int) -> float:
    """Median over 5 rounds of the mean time of fn() in microseconds."""
    rounds = []
    for _ in range(5):
        k = max(1, iterations // 5)
        started = time.perf_counter()
        for _ in range(k):
            fn()
        rounds.append((time.perf_counter() - started) / k * 1e6)
    return statistics.median(rounds)


class _NoMetric:
    """Stands in for a prometheus_client metric: every update does nothing."""

    def labels(self, *args, **kwargs):
        return self

    def inc(self, *args, **kwargs):
        pass

    dec = inc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("body", help="a JSON request body file ({\"instances\": [[784 numbers]]})")
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="profile-request-"))
    # As under mnist-serve: multiprocess metrics (chosen at prometheus_client's import) and the log to a file.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
    (workdir / "metrics").mkdir()
    log_file = open(workdir / "access.log", "w")  # noqa: SIM115 - open for the whole run
    real_stderr = os.fdopen(os.dup(2), "w")  # the access log writes to file descriptor 2 itself
    os.dup2(log_file.fileno(), 2)
    sys.stderr = log_file

    import numpy as np
    import orjson
    from werkzeug.test import EnvironBuilder

    from mnist_service import metrics
    from mnist_service.access import ACCESS as access_log
    from mnist_service.codecs import v1 as codec_v1
    from mnist_service.dataplane.options import Limits, RequestOptions
    from mnist_service.http.app import create_app
    from mnist_service.settings import Settings

    body = Path(args.body).read_bytes()
    app = create_app(Settings(model_dir=Path(args.model_dir), model_name=args.name, model_poll_seconds=0))
    model = app.extensions["model_store"].current
    os.environ["BARE_MODEL_PATH"] = str(Path(args.model_dir, args.name, str(model.version)))
    from bench.service import bare_app

    def environ():
        return EnvironBuilder(method="POST", path="/v1/predict", data=body,
                              content_type="application/json").get_environ()

    def call(wsgi_app):
        def run(env):
            status = []
            out = b"".join(wsgi_app(env, lambda s, h, exc_info=None: status.append(s)))
            assert status[0].startswith("200"), (status, out[:200])
        return run

    n = args.iterations
    for _ in range(200):  # warm up both apps
        call(app)(environ())
        call(bare_app.app)(environ())

    # (1) The steps every server does, timed alone on the same input.
    pixels, _ = codec_v1.decode_json(body, Limits(), RequestOptions())
    probabilities = model.predict_proba(pixels)
    labels, confidences = probabilities.argmax(axis=1), probabilities.max(axis=1)

    def respond():
        predictions = [{"label": int(label), "confidence": float(conf), "probabilities": p}
                       for label, conf, p in zip(labels, confidences, probabilities)]
        orjson.dumps({"model": {"name": model.name, "version": model.version}, "predictions": predictions},
                     option=orjson.OPT_SERIALIZE_NUMPY)

    shared = {"JSON parse (orjson.loads)": per_call_us(lambda: orjson.loads(body), n),
              "forward pass (predict_proba)": per_call_us(lambda: model.predict_proba(pixels), n),
              "response body (predictions + orjson.dumps)": per_call_us(respond, n)}
    shared_total = sum(shared.values())

    # (2) The whole request with one feature switched off at a time: what each costs in place.
    def bare_parse(data, limits, options):
        return np.asarray(orjson.loads(data)["instances"], dtype=np.float32), options

    metric_names = ["IN_FLIGHT", "observe_request", "observe_inference"]
    real = {name: getattr(metrics, name) for name in metric_names} | {"decode_json": codec_v1.decode_json}

    def configure(off: set[str]):
        for name in metric_names:
            stand_in = (lambda *a: None) if name.startswith("observe_") else _NoMetric()
            setattr(metrics, name, stand_in if "metrics" in off else real[name])
        codec_v1.decode_json = bare_parse if "validation" in off else real["decode_json"]
        access_log.disabled = "log" in off

    variants = {"full": set(), "no access log": {"log"}, "no metrics": {"metrics"},
                "no validation (bare parse)": {"validation"}, "none of the three": {"log", "metrics", "validation"},
                "bare app": None}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    chunk = 250
    for _ in range(max(3, n // chunk)):  # interleaved, so a noisy moment hits every variant alike
        for name, off in variants.items():
            target = bare_app.app if off is None else app
            configure(off or set())
            envs = [environ() for _ in range(chunk)]
            run = call(target)
            started = time.perf_counter()
            for env in envs:
                run(env)
            samples[name].append((time.perf_counter() - started) / chunk * 1e6)
    configure(set())
    median = {name: statistics.median(v) for name, v in samples.items()}
    full = median["full"]
    costs = {"access log (one JSON line per request)": full - median["no access log"],
             "metrics (12 multiprocess-mode updates)": full - median["no metrics"],
             "validation (codecs.v1.decode_json beyond orjson.loads + np.asarray)":
                 full - median["no validation (bare parse)"],
             "plumbing (middleware, werkzeug Request, request id, model lookup, options)":
                 median["none of the three"] - shared_total,
             "the shared steps (JSON parse, forward pass, response body)": shared_total}

    sys.stderr = real_stderr
    log_file.close()
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"iterations": n, "instances": int(pixels.shape[0]),
        "whole_request_us": {k: round(v, 1) for k, v in median.items()},
        "costs_us": {k: round(v, 1) for k, v in costs.items()},
        "bare_app_us": {"Flask's request cycle": round(median["bare app"] - shared_total, 1),
                        "the shared steps": round(shared_total, 1), "total": round(median["bare app"], 1)},
        "shared_steps_us": {k: round(v, 1) for k, v in shared.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
