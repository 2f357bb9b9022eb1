"""Deadlines for calls to dependencies that a busy process does not trip.

``asyncio.timeout(d)`` expires when the event loop gets to its timer. After a stall (a long
callback, a full garbage collection, the CPU taken by other processes) that is often before the
loop has handed over the answer that arrived meanwhile: uvloop runs due timers before it polls the
sockets, and asyncio runs the timer in the same turn as the read, before the waiting task resumes.
A dependency that answered in time is then counted as failed, and its circuit breaker opens.

``deadline(d)`` is ``asyncio.timeout(d)``, except that a timer that fires late (the loop was busy)
gives the call ``d`` more, once, from when the loop came back. A dependency that does not answer
still times out, within twice ``d`` plus the stall.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: A timer firing this much after it was due found the event loop busy.
LATE = 0.01


class _Expiry:
    """The timer of one ``deadline``: lets ``timeout`` expire, or grants the grace first."""

    __slots__ = ("_graced", "_loop", "_seconds", "_timeout", "due", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: asyncio.Timeout,
                 seconds: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._seconds = seconds
        self._graced = False
        self.due = loop.time() + seconds
        self.handle = loop.call_at(self.due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        if now - self.due > LATE and not self._graced:
            self._graced, self.due = True, now + self._seconds
            self.handle = self._loop.call_at(self.due, self._fire)
        else:
            self._timeout.reschedule(now)  # expires at once


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """``async with deadline(0.15):``: raises ``TimeoutError`` like ``asyncio.timeout``."""
    async with asyncio.timeout(None) as timeout:
        expiry = _Expiry(asyncio.get_running_loop(), timeout, seconds)
        try:
            yield
        finally:
            expiry.handle.cancel()
