"""The event loop's lag: how long an RPC that is ready waits for its turn (observe.py sheds by it)."""

from __future__ import annotations

import asyncio
import time


class EventLoopLag:
    """How late the event loop runs what is ready: a timer's delay past its due time, measured
    every INTERVAL. RPCs waiting their turn wait about this long."""

    INTERVAL = 0.01

    def __init__(self):
        self.seconds = 0.0

    async def measure(self) -> None:
        while True:
            due = time.perf_counter() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            self.seconds = max(time.perf_counter() - due, 0.0)
