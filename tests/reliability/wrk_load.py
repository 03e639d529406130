"""Load for the reliability cases: wrk (a C client, cheap on 2 cores) with mixed.lua, which rotates
request kinds and records every answer; and the checks that every answer matches its version."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from mnist_artifact import Model, preprocess
from mnist_artifact.repository import open_repository, parse_location
from service_helpers import png

LUA = Path(__file__).with_name("mixed.lua")


@dataclass
class Kind:
    """One kind of request in the mix, and the 28x28 pixels the service should predict from."""

    name: str
    content_type: str
    body: bytes
    pixels: np.ndarray  # (N, 784), the model's input for this request


def request_mix(images: np.ndarray) -> list[Kind]:
    """Single JSON instance, batch-8 JSON, a base64 PNG instance and a raw image/png body (real MNIST digits).
    The images are given to the service as pictures (enlarged; the raw one dark on light, as a scan
    would be), so they go through the whole MNIST preprocessing."""
    flat = images.reshape(-1, 784).astype(np.float32)
    photo = 255 - np.kron(images[9], np.ones((3, 3), np.uint8))
    b64_png, raw_png = png(np.kron(images[10], np.ones((2, 2), np.uint8))), png(photo)
    as_pixels = lambda data: preprocess.prepare(data).reshape(1, 784).astype(np.float32)  # noqa: E731
    return [
        Kind("single", "application/json", orjson.dumps({"instances": [images[0].tolist()]}), flat[:1]),
        Kind("batch8", "application/json", orjson.dumps({"instances": flat[1:9].astype(int).tolist()}), flat[1:9]),
        Kind("b64png", "application/json",
             orjson.dumps({"instances": [{"b64": base64.b64encode(b64_png).decode()}]}), as_pixels(b64_png)),
        Kind("rawpng", "image/png", raw_png, as_pixels(raw_png)),
    ]


@dataclass
class Result:
    """What wrk saw: counts, latency, and every distinct answer (mixed.lua)."""

    requests: int
    seconds: float
    socket_errors: dict
    latency_ms: dict
    answers: list[dict]
    failures: dict[int, int]  # status -> count, non-2xx answers
    failed_bodies: list[str]
    unkept: int  # 2xx answers not kept (mixed.lua keeps at most 20 distinct bodies per kind and version)

    @property
    def errors(self) -> int:
        return sum(self.failures.values()) + sum(self.socket_errors.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


class Wrk:
    """`with Wrk(url, kinds, work_dir, connections, seconds) as wrk: ...`, then `wrk.result`.

    wrk stops after `seconds` or, when the block ends first, at SIGINT (it then reports as usual)."""

    def __init__(self, url: str, kinds: list[Kind], work_dir: Path, connections: int = 64, seconds: float = 60,
                 path: str = "/v1/predict"):
        if shutil.which("wrk") is None:
            raise RuntimeError("wrk is not installed (Debian package wrk: scripts/system-deps)")
        work_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for kind in kinds:
            body_file = work_dir / f"{kind.name}.body"
            body_file.write_bytes(kind.body)
            lines.append(f"{kind.name}\t{path}\t{kind.content_type}\t{body_file}")
        (work_dir / "requests.tsv").write_text("\n".join(lines) + "\n")
        self.report = work_dir / "wrk.json"
        self.report.unlink(missing_ok=True)
        self.argv = ["wrk", "--threads", "2", "--connections", str(connections), "--duration", f"{int(seconds)}s",
                     "--timeout", "10s", "--script", str(LUA), url]
        self.env = {**os.environ, "WRK_REQUESTS": str(work_dir / "requests.tsv"), "WRK_REPORT": str(self.report)}
        self.seconds = seconds
        self.result: Result | None = None

    def __enter__(self) -> Wrk:
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=self.seconds + 30)
        if exc[0] is None:
            if self.process.returncode != 0 or not self.report.exists():
                raise RuntimeError(f"wrk failed ({self.process.returncode}): {output}")
            report = json.loads(self.report.read_text())
            failures = {int(f["status"]): f["count"] for f in report.pop("failures")}
            self.result = Result(seconds=report.pop("duration_s"), failures=failures, **report)

    def wait(self) -> None:
        """Until wrk has run its `seconds`."""
        self.process.wait(timeout=self.seconds + 30)


def check_answers(result: Result, kinds: list[Kind], model_dir: Path | str, name: str = "mnist") -> dict[int, int]:
    """Every 2xx answer matches the forward pass of the version it names (mnist_artifact.Model), read
    from model_dir (a directory or s3://...). Returns the number of answers per version."""
    assert result.unkept == 0, f"{result.unkept} answers differ from every kept answer of their version"
    by_kind = {k.name: k for k in kinds}
    models: dict[int, Model] = {}
    per_version: dict[int, int] = {}
    for answer in result.answers:
        kind_name, _ = answer["key"].split(" ")
        body = json.loads(answer["body"])
        version = body["model"]["version"]
        if version not in models:
            repository = open_repository(parse_location("MODEL_DIR", str(model_dir)))
            models[version] = Model(*repository.load(name, version))
        want = models[version].predict_proba(by_kind[kind_name].pixels)
        served = np.array([p["probabilities"] for p in body["predictions"]])
        assert served.shape == want.shape and np.abs(served - want).max() <= 1e-6, \
            f"a {kind_name} answer of version {version} is not that version's forward pass: {answer['body'][:300]}"
        assert [p["label"] for p in body["predictions"]] == want.argmax(axis=1).tolist()
        per_version[version] = per_version.get(version, 0) + answer["count"]
    return per_version
