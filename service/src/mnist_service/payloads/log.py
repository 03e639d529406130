"""The payload log of one process: which exchanges are kept, the bounded queue, and its one sender.

The request path only decides (sampling by request id, failed requests, the queue's room) and
appends; it never blocks and never serialises. One sender (a greenlet under gunicorn's gevent
worker, a thread in the gRPC process) turns exchanges into events and delivers them: to a
CloudEvents sink in pipelined batches (http_sink.py), or into JSON Lines files (file_sink.py).
Every event ends counted in mnist_payload_events_total under one outcome, so that sent + failed +
dropped + sampled_out + skipped = exchanges x events per exchange. A failing sink is logged once
when it starts failing and once when it recovers, never once an event.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib

from .. import access, metrics
from ..settings import Settings
from . import events
from .events import Exchange, Source
from .file_sink import FileSink
from .http_sink import HttpSink, retried

log = logging.getLogger(__name__)

EVENT_KINDS = {"all": (events.REQUEST, events.RESPONSE), "request": (events.REQUEST,),
               "response": (events.RESPONSE,)}
PIPELINE = 128  # events written to an HTTP sink in one go: about 1 ms of the sender's work at a time
# A sender that finds fewer waits this long for more: each batch costs the sender (and the worker it
# shares a CPU with) switches and system calls besides its events, so batches of one would cost the most.
LINGER_SECONDS = 0.02
IDLE_SECONDS = 1.0  # an idle sender still wakes this often (gauges, file batches that are due)
BACKOFF_SECONDS, BACKOFF_MAX_SECONDS = 0.1, 2.0
SENT, FAILED, DROPPED, SAMPLED_OUT, SKIPPED = "sent", "failed", "dropped", "sampled_out", "skipped"


class PayloadLog:
    def __init__(self, settings: Settings, sink: HttpSink | FileSink, source: Source):
        self.sink, self.source = sink, source
        self.kinds = EVENT_KINDS[settings.payload_log_events]
        self.sample_below = int(settings.payload_log_sample_rate * 2**32)  # of the request id's crc32
        self.log_failed = settings.payload_log_failed
        self.max_events, self.max_bytes = settings.payload_log_queue_events, settings.payload_log_queue_bytes
        self.retries, self.timeout = settings.payload_log_retries, settings.payload_log_timeout
        self.batch_events, self.batch_seconds = settings.payload_log_batch_events, settings.payload_log_batch_seconds
        self.queue: collections.deque[Exchange] = collections.deque()
        self.queued_events = self.queued_bytes = 0
        self.lock = threading.Lock()  # the counts above, between the request path and the sender thread
        self.wake, self.sender_waiting = threading.Event(), False
        self.stopping, self.deadline = False, float("inf")
        self.failing_since: float | None = None
        self.failed_in_streak = 0
        self.counters = {(kind, outcome): metrics.PAYLOAD_EVENTS.labels(kind, outcome)
                         for kind in (events.REQUEST, events.RESPONSE)
                         for outcome in (SENT, FAILED, DROPPED, SAMPLED_OUT, SKIPPED)}
        self.thread: threading.Thread | None = None

    def start(self) -> PayloadLog:
        self.thread = threading.Thread(target=self._send_until_closed, name="payload-log", daemon=True)
        self.thread.start()
        log.info("payload log on", extra={"sink": str(self.sink), "events": list(self.kinds)})
        return self

    # -- the request path -------------------------------------------------------------------------

    def record(self, notes: dict, *, request_id: str, protocol: str, status: int | str, failed: bool,
               seconds: float) -> None:
        """Keep this exchange for the sender, or count why not; `notes` are the request's access notes."""
        if self.sample_below < 2**32 and zlib.crc32(request_id.encode()) >= self.sample_below:
            return self._count(SAMPLED_OUT)
        if failed and not self.log_failed:
            return self._count(SKIPPED)
        given = notes.get("inference_id")  # an id that goes into a header only if it is tame
        exchange = Exchange(given if given and access.REQUEST_ID.fullmatch(given) else request_id,
                            time.time() - seconds, protocol, status, notes.get("model_version"),
                            notes.get("model_label"), notes.get("pixels"), notes.get("probabilities"),
                            notes.get("error"))
        size, count = exchange.nbytes(), len(self.kinds)
        with self.lock:
            if self.stopping or self.queued_events + count > self.max_events or \
                    self.queued_bytes + size > self.max_bytes:
                full = True
            else:
                full = False
                self.queue.append(exchange)
                self.queued_events += count
                self.queued_bytes += size
        if full:
            return self._count(DROPPED)
        if self.sender_waiting:
            self.wake.set()

    def _count(self, outcome: str, kinds: tuple[str, ...] | None = None, n: int = 1) -> None:
        for kind in kinds or self.kinds:
            self.counters[kind, outcome].inc(n)

    # -- the sender ---------------------------------------------------------------------------------

    def _send_until_closed(self) -> None:
        lines: list[bytes] = []  # the file sink's batch, and the exchanges it holds
        batch: list[Exchange] = []
        batch_started = None
        while not (self.stopping and not self.queue) and time.monotonic() < self.deadline:
            limit = PIPELINE if isinstance(self.sink, HttpSink) else self.batch_events - len(lines)
            taken = self._take(max(1, limit // len(self.kinds)), self._wait_seconds(batch_started),
                               LINGER_SECONDS if isinstance(self.sink, HttpSink) else 0)
            if isinstance(self.sink, HttpSink):
                if taken:
                    self._deliver(taken)
                continue
            lines += [events.json_line(x, kind, self.source) for x in taken for kind in self.kinds]
            batch += taken
            if lines and batch_started is None:
                batch_started = time.monotonic()
            if lines and (len(lines) >= self.batch_events or self.stopping
                          or time.monotonic() - batch_started >= self.batch_seconds):
                self._write(lines, batch)
                lines, batch, batch_started = [], [], None
        if lines:
            self._write(lines, batch)

    def _wait_seconds(self, batch_started: float | None) -> float:
        if batch_started is None:
            return IDLE_SECONDS
        return max(0.0, min(IDLE_SECONDS, batch_started + self.batch_seconds - time.monotonic()))

    def _take(self, most: int, wait: float, linger: float) -> list[Exchange]:
        """Up to `most` exchanges, waiting up to `wait` seconds for the first, then `linger` for more."""
        if not self.queue and not self.stopping:
            self.sender_waiting = True
            if not self.queue:
                self.wake.wait(wait)
            self.sender_waiting = False
            self.wake.clear()
        if linger and 0 < len(self.queue) < most and not self.stopping:
            time.sleep(linger)
        taken = []
        with self.lock:
            while self.queue and len(taken) < most:
                taken.append(self.queue.popleft())
            self._show_queue()
        return taken

    def _show_queue(self) -> None:
        """The gauges, from the sender (under the lock): the request path does not pay for them."""
        metrics.PAYLOAD_QUEUE_EVENTS.set(self.queued_events)
        metrics.PAYLOAD_QUEUE_BYTES.set(self.queued_bytes)

    def _release(self, exchanges: list[Exchange]) -> None:
        """Their events are counted: they no longer take room in the queue's limits."""
        with self.lock:
            self.queued_events -= len(exchanges) * len(self.kinds)
            self.queued_bytes -= sum(x.nbytes() for x in exchanges)
            self._show_queue()

    def _deliver(self, exchanges: list[Exchange]) -> None:
        """Send the events of these exchanges, retrying what may succeed later; count each outcome."""
        messages = [(kind, message) for x in exchanges for kind, message in
                    zip(self.kinds, events.http_messages(x, self.kinds, self.source, self.sink.host, self.sink.path))]
        statuses: list[int | None] = [None] * len(messages)
        pending = list(range(len(messages)))
        for attempt in range(1 + self.retries):
            if attempt and not self._pause_before(attempt):
                break
            for i, status in zip(pending, self.sink.send([messages[i][1] for i in pending])):
                statuses[i] = status
            pending = [i for i in pending if retried(statuses[i])]
            if not pending:
                break
        outcomes = collections.Counter((kind, SENT if status is not None and 200 <= status < 300 else FAILED)
                                       for (kind, _), status in zip(messages, statuses))
        for (kind, outcome), n in outcomes.items():
            self._count(outcome, (kind,), n)
        failed = sum(n for (_, outcome), n in outcomes.items() if outcome == FAILED)
        reasons = sorted({"no answer" if s is None else f"HTTP {s}" for s in statuses if s is None or s >= 300})
        self._note_health(failed, ", ".join(reasons))
        self._release(exchanges)

    def _write(self, lines: list[bytes], exchanges: list[Exchange]) -> None:
        """Write one file of these events; after the retries they count as failed."""
        self._write_once(lines)
        self._release(exchanges)

    def _write_once(self, lines: list[bytes]) -> None:
        error = ""
        for attempt in range(1 + self.retries):
            if attempt and not self._pause_before(attempt):
                break
            try:
                self.sink.write(lines)
            except Exception as e:  # RepositoryError, OSError: the store or the disk refused
                error = str(e)
                continue
            for kind in self.kinds:
                self._count(SENT, (kind,), len(lines) // len(self.kinds))
            return self._note_health(0, "")
        for kind in self.kinds:
            self._count(FAILED, (kind,), len(lines) // len(self.kinds))
        self._note_health(len(lines), error)

    def _pause_before(self, attempt: int) -> bool:
        """Back off before retry `attempt` (0.1 s, 0.2 s, ... at most 2 s); False when the shutdown
        deadline leaves no time for it."""
        seconds = min(BACKOFF_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
        if time.monotonic() + seconds >= self.deadline:
            return False
        time.sleep(seconds)
        return True

    def _note_health(self, failed: int, reason: str) -> None:
        """One line when deliveries start failing, one when they work again: never one per event."""
        if failed and self.failing_since is None:
            self.failing_since, self.failed_in_streak = time.monotonic(), failed
            log.warning("payload sink failing: events are counted as failed or dropped until it recovers",
                        extra={"sink": str(self.sink), "reason": reason})
        elif failed:
            self.failed_in_streak += failed
        elif self.failing_since is not None:
            log.info("payload sink recovered", extra={
                "sink": str(self.sink), "failed_events": self.failed_in_streak,
                "seconds": round(time.monotonic() - self.failing_since, 3)})
            self.failing_since = None

    # -- shutdown -------------------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Stop taking exchanges and send what waits for up to `timeout` seconds; the rest is dropped."""
        with self.lock:
            self.stopping, self.deadline = True, time.monotonic() + timeout
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout + 1)
        with self.lock:
            left, self.queue = list(self.queue), collections.deque()
        self._release(left)
        if left:
            self._count(DROPPED, n=len(left))
            log.warning("payload log closed with events unsent", extra={"dropped_exchanges": len(left)})
        if isinstance(self.sink, HttpSink):
            self.sink.close()
