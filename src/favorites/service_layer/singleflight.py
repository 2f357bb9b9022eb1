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
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LeaderCancelled(Exception):
    """The caller running the load was cancelled: the load was abandoned, not failed."""


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

        The first caller runs the load itself, the others wait for its outcome. Measured: a task
        per load (so that no caller's cancellation could reach it) cost 8 µs per miss; almost
        every miss has no other caller to protect. When the caller running the load is cancelled
        (its client went away), the load is abandoned and the callers waiting for it start
        another; a waiting caller that is cancelled only stops waiting.
        """
        while (flight := self._flights.get(key)) is not None:
            self.joined += 1
            try:
                return await asyncio.shield(flight)
            except _LeaderCancelled:
                continue  # whoever gets here first loads
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        self.loads += 1
        try:
            value = await load()
        except asyncio.CancelledError:
            flight.set_exception(_LeaderCancelled())
            raise
        except BaseException as error:
            flight.set_exception(error)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if flight.done() and not flight.cancelled():
                flight.exception()  # retrieved: no "exception was never retrieved" warning
