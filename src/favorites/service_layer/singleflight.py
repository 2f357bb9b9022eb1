"""Collapse concurrent loads of one key into one: the first caller loads, the others await it.

Used for cache misses (a user's first page and count, a product's existence) so a burst of misses
for one key costs the database one query per process. Across instances each process loads at most
once per key; there is no cross-instance lock (it would put Redis on the miss path's critical
section and buy little: N instances cost at most N loads).

Callers build the key from the cache's version token, so a read that starts after a write was
invalidated never joins a load that started before it (it would return the pre-write data).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}
        #: Loads started and callers that joined one already in flight (for tests and metrics).
        self.loads = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """``load()`` once for all concurrent callers of ``key``; its result or error for each.

        The load runs as its own task, so a caller that is cancelled (client gone) does not cancel
        the load the others are waiting for.
        """
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._flights[key] = task
            self.loads += 1
            task.add_done_callback(functools.partial(self._done, key))
        else:
            self.joined += 1
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Future[V]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" when nobody waits
