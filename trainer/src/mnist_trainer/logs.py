"""Progress and result lines on stderr: readable text by default, JSON lines on request."""

from __future__ import annotations

import json
import sys
import time


class EventLog:
    def __init__(self, fmt: str = "text", stream=None, **context):
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.context = context  # fields every line carries, e.g. a sweep's trial index

    def __call__(self, event: str, message: str = "", **fields) -> None:
        fields = {**fields, **self.context}
        if self.fmt == "json":
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
                      **({"message": message} if message else {}), **fields}
            line = json.dumps(record, default=str)
        else:
            parts = [message or event] + [f"{k} {_text(v)}" for k, v in fields.items()]
            line = "  ".join(parts)
        self.stream.write(line + "\n")  # one write: the lines of parallel sweep trials never interleave
        self.stream.flush()


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
