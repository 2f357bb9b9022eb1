"""Who wrote moments ago: their next reads go to the primary (read-your-writes).

A replica lags the primary by a little. A user who just added a favorite and reloads must see it,
so for ``window`` seconds after a committed write that user's reads skip the replicas. Marks live
in this process and, when Redis is configured, in Redis too, because the next request of that user
may land on another instance.

Failure policy: Redis is best effort. Every call has a short timeout; after a failure Redis is
skipped for ``retry_after`` seconds and only the in-process marks are used. Consequence while Redis
is down: a user whose write went through instance A and whose next read (within the window) lands
on instance B may read from a replica and, for as long as that replica lags, not see the write.
Reads on instance A, and everything once the replica catches up, stay correct.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

from redis.asyncio import Redis, RedisCluster

from favorites.deadlines import deadline

log = logging.getLogger("favorites.db.routing")

Clock = Callable[[], float]


class RecentWriters(Protocol):
    """Both methods are best effort and never raise: routing must not fail a request."""

    async def mark(self, user_id: UUID) -> None:
        """Record that ``user_id`` has just committed a write."""

    async def wrote_recently(self, user_id: UUID) -> bool:
        """True while ``user_id`` is inside the read-your-writes window."""

    async def aclose(self) -> None:
        """Release what it owns (a Redis client); called when the database is disposed."""


class InProcessRecentWriters:
    """Marks in a dict ordered by expiry (one window for all, so insertion order is expiry order);
    expired entries are pruned from the front on every mark, so memory stays ~ writes/s x window."""

    def __init__(self, window_seconds: float, *, clock: Clock = time.monotonic,
                 max_entries: int = 1_000_000):
        self.window = window_seconds
        self._clock = clock
        self._max = max_entries
        self._until: dict[UUID, float] = {}

    def mark_now(self, user_id: UUID) -> None:
        now = self._clock()
        self._prune(now)
        self._until.pop(user_id, None)  # re-insert at the end: order stays the expiry order
        self._until[user_id] = now + self.window
        if len(self._until) > self._max:
            del self._until[next(iter(self._until))]

    def recently(self, user_id: UUID) -> bool:
        until = self._until.get(user_id)
        return until is not None and until > self._clock()

    async def mark(self, user_id: UUID) -> None:
        self.mark_now(user_id)

    async def wrote_recently(self, user_id: UUID) -> bool:
        return self.recently(user_id)

    async def aclose(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        while self._until:
            oldest = next(iter(self._until))
            if self._until[oldest] > now:
                return
            del self._until[oldest]


class RedisRecentWriters:
    """In-process marks plus a shared mark in Redis (``{u:<uuid>}:rw`` with the window as TTL).

    The key is hash-tagged with the user so, on Redis Cluster, it sits in the same slot as the
    user's other keys. ``client`` is a ``redis.asyncio`` client (single node or cluster).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        window_seconds: float,
        *,
        timeout: float = 0.1,
        retry_after: float = 5.0,
        clock: Clock = time.monotonic,
        owns_client: bool = False,
    ):
        self.window = window_seconds
        self.local = InProcessRecentWriters(window_seconds, clock=clock)
        self._client = client
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._owns_client = owns_client
        self._skip_until = float("-inf")
        #: Redis calls that failed or timed out (the observability code may export it).
        self.failures = 0

    @staticmethod
    def key(user_id: UUID) -> str:
        return f"{{u:{user_id}}}:rw"

    @property
    def redis_available(self) -> bool:
        return self._clock() >= self._skip_until

    async def mark(self, user_id: UUID) -> None:
        self.local.mark_now(user_id)
        if not self.redis_available:
            return
        try:
            async with deadline(self._timeout):
                await self._client.set(self.key(user_id), b"1", px=max(1, int(self.window * 1000)))
        except Exception as exc:  # best effort by design: the local mark still holds
            self._failed(exc)

    async def wrote_recently(self, user_id: UUID) -> bool:
        if self.local.recently(user_id):
            return True  # no round trip for this instance's own writers
        if not self.redis_available:
            return False
        try:
            async with deadline(self._timeout):
                return bool(await self._client.exists(self.key(user_id)))
        except Exception as exc:  # fall back to the local answer (False), see module docstring
            self._failed(exc)
            return False

    async def aclose(self) -> None:
        """Closes the client when it was handed over (closing a shared one twice is harmless)."""
        if self._owns_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.redis_available:
            log.warning(
                "read-your-writes marks: Redis unavailable (%s); using in-process marks for %.0f s",
                type(exc).__name__, self._retry_after,
            )
        self._skip_until = self._clock() + self._retry_after
