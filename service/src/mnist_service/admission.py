"""Load shedding by how long a request waited: the budget both transports apply.

Under overload requests wait in the listening socket's accept queue (shared by the workers) and in
a gevent worker that has accepted them but not yet started them. The kernel knows how long each
one waited: TCP_INFO's tcpi_last_data_recv, the time since the request's last bytes arrived, read
with one system call when the worker accepts it. A request that waited longer than the
budget is answered 503 with Retry-After straight from the socket (process/shedding.py), which costs a small
fraction of a prediction; the rest are served. The queue therefore stays about one budget long,
whatever the offered rate.

A crowd that reconnects as soon as it is answered (a retry storm, a closed-loop load test) keeps
every connection waiting however fast the excess is shed: shedding cannot shorten that queue, only
waste the capacity (Little's law: the wait is the crowd over the answers per second). So when a
whole window goes by in which every request came late, the budget rises to the ceiling: the
workers serve what they can answer within it and shed only what waited longer. It comes back to
the normal budget once a request waited less than half of that (the crowd is gone), or after
`hold` seconds, to see whether the crowd is still there (if so, the next window sends it up again).
"""

from __future__ import annotations

import math
import time


class Admission:
    """One worker's shedding budget. `on_time(waited)`: whether a request that waited that long may
    still be started; a late inference request is shed (process/shedding.py; gRPC: grpc/observe.py)."""

    def __init__(self, budget: float, ceiling: float, window: float = 0.25, hold: float = 5.0,
                 clock=time.monotonic):
        self.normal, self.ceiling = budget, max(budget, ceiling)
        self.window, self.hold, self.clock = window, hold, clock
        self.budget = budget
        self.raised_at = 0.0
        self.window_ends = clock() + window
        self.on_time_count = self.late_count = 0
        self.shortest_wait = math.inf

    def on_time(self, waited: float) -> bool:
        now = self.clock()
        if now >= self.window_ends:
            self._adapt(now)
        self.shortest_wait = min(self.shortest_wait, waited)
        if waited <= self.budget:
            self.on_time_count += 1
            return True
        self.late_count += 1
        return False

    def _adapt(self, now: float) -> None:
        if self.late_count and not self.on_time_count:  # shedding does not drain the queue: a crowd
            self.budget, self.raised_at = self.ceiling, now
        elif self.budget > self.normal and (self.shortest_wait < self.normal / 2 or now - self.raised_at >= self.hold):
            self.budget = self.normal
        self.on_time_count = self.late_count = 0
        self.shortest_wait = math.inf
        self.window_ends = now + self.window
