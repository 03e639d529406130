"""Payload logging (PAYLOAD_LOG_URL): every inference request and its answer as CloudEvents, sent to
an event sink or written into JSON Lines files, without ever holding up or failing the request.

events.py says what an event holds, log.py which are kept and how they leave (its one sender per
process), http_sink.py and file_sink.py where they go. `open_payload_log` builds it from the settings.
"""

from __future__ import annotations

import socket

from mnist_artifact.repository import open_repository

from ..settings import Settings
from .events import Source
from .file_sink import FileSink
from .http_sink import HttpSink
from .log import PayloadLog


def open_payload_log(settings: Settings) -> PayloadLog | None:
    """This process's payload log, its sender started; None when PAYLOAD_LOG_URL is not set."""
    url = settings.payload_log_url
    if url is None:
        return None
    source = Source(f"urn:mnist-mlp:{socket.gethostname()}", settings.model_name, settings.pod_namespace,
                    settings.payload_log_data, settings.payload_log_max_event_bytes)
    if isinstance(url, str):
        sink = HttpSink(url, settings.payload_log_timeout)
    else:
        sink = FileSink(open_repository(url))
    return PayloadLog(settings, sink, source).start()


__all__ = ["PayloadLog", "open_payload_log"]
