"""The in-process limiter: the embedded default, and the fallback while Redis is away.

Why not ``limits.aio.storage.MemoryStorage``: each of its increments schedules a sweep over every
key it holds, so its cost grows with the number of active callers (measured with limits 5.8 and the
event loop turning between hits: 65 us per hit at 1,000 keys, 650 us at 10,000, 3.3 ms at 50,000).
Because our windows are aligned to the clock, expiry here is free: when a window ends, its whole
table is dropped. Memory is bounded by the identities seen in one window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from favorites.adapters.ratelimit.port import Decision, RateLimit, Scope


class InProcessRateLimiter:
    """Counts per process; exact for one instance, ``instances x limit`` across several."""

    def __init__(self, rates: Mapping[Scope, RateLimit],
                 clock: Callable[[], float] = time.time) -> None:
        self._rates = dict(rates)
        self._clock = clock
        #: scope -> (window number, identity -> count); one table per scope and window.
        self._tables: dict[Scope, tuple[int, dict[str, int]]] = {}

    def count(self, scope: Scope, identity: str) -> Decision:
        """Synchronous core, also used by the Redis limiter's fallback without an await."""
        rate = self._rates[scope]
        window, reset_after = rate.window(self._clock())
        current = self._tables.get(scope)
        if current is None or current[0] != window:
            current = (window, {})
            self._tables[scope] = current
        table = current[1]
        count = table.get(identity, 0) + 1
        table[identity] = count
        return Decision.of(rate, count, reset_after)

    async def hit(self, scope: Scope, identity: str) -> Decision:
        return self.count(scope, identity)

    async def readiness(self) -> str:
        return "ok"

    async def close(self) -> None:
        self._tables.clear()
