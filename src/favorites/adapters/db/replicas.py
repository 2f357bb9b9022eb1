"""Read replicas: round-robin over the healthy ones, and the routing rule for each unit of work.

Rule: a read-only unit of work goes to a replica unless its user wrote within the
read-your-writes window (see ``recent_writers``); everything else goes to the primary. A replica
that fails to hand out a connection sits out ``retry_after`` seconds and the read is served by the
primary instead, so one replica down never turns into an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db.checkout import Checkout, check_out
from favorites.adapters.db.recent_writers import RecentWriters

log = logging.getLogger("favorites.db.routing")


class ReplicaSet:
    def __init__(
        self,
        engines: Sequence[AsyncEngine],
        *,
        retry_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engines = tuple(engines)
        self._retry_after = retry_after
        self._clock = clock
        self._down_until = [float("-inf")] * len(self.engines)
        self._next = 0

    def __len__(self) -> int:
        return len(self.engines)

    def pick(self) -> AsyncEngine | None:
        """The next healthy replica in turn, or None when every replica is sitting out."""
        now = self._clock()
        for _ in range(len(self.engines)):
            index = self._next
            self._next = (index + 1) % len(self.engines)
            if self._down_until[index] <= now:
                return self.engines[index]
        return None

    def mark_down(self, engine: AsyncEngine, reason: BaseException | None = None) -> None:
        index = self.engines.index(engine)
        if self._down_until[index] <= self._clock():
            log.warning("replica %s unavailable (%s); reads go elsewhere for %.0f s",
                        engine.url.render_as_string(hide_password=True),
                        type(reason).__name__ if reason else "unknown", self._retry_after)
        self._down_until[index] = self._clock() + self._retry_after

    def healthy(self) -> list[AsyncEngine]:
        now = self._clock()
        return [e for e, until in zip(self.engines, self._down_until, strict=True) if until <= now]


class ReadRouter:
    """Hands each unit of work a connection to the right server and records writers."""

    def __init__(self, primary: AsyncEngine, replicas: ReplicaSet, writers: RecentWriters):
        self.primary = primary
        self.replicas = replicas
        self.writers = writers

    async def connect(self, *, readonly: bool, user_id: UUID | None) -> Checkout:
        if readonly and len(self.replicas) and not (
            user_id is not None and await self.writers.wrote_recently(user_id)
        ):
            engine = self.replicas.pick()
            if engine is not None:
                try:
                    return Checkout.of(engine, await engine.connect())
                except Exception as exc:  # connect or pre-ping failed: this read uses the primary
                    self.replicas.mark_down(engine, exc)
        return await check_out(self.primary)

    async def wrote(self, user_id: UUID) -> None:
        """After a committed write: only worth recording when some reads go to replicas."""
        if len(self.replicas):
            try:
                await self.writers.mark(user_id)
            except Exception:  # the write is committed; a lost mark only risks a stale read
                log.warning("could not record a recent writer", exc_info=True)
