"""The cache epoch: how an invalidation lost while Redis was unreachable stays harmless.

Every Redis key of the caches includes the epoch, whose truth is one row in the database. An
instance that cannot deliver an invalidation (Redis down, slow, or skipped by the open breaker)
bumps the epoch in the database *before* the write is answered, and moves to the new epoch at once:
every entry written before, including the stale one, is unreachable from then on, whatever Redis
comes back with (its old data after a restart from a snapshot, or after a pause). They expire by TTL.

Other instances re-read the epoch every ``interval`` (1 s). Until then they could serve the stale
entry only if Redis answers them while it did not answer the writer (a partial partition); a
Redis that was down for everyone serves nobody meanwhile. Besides, an instance whose breaker closes
again re-reads the epoch before it uses Redis (``require_sync``), and one whose epoch is older than
``max_staleness`` (the database unreachable) or whose bump failed does not use Redis at all.

A Redis that restarts from a snapshot, or a replica promoted in a failover, can bring back
version keys older than invalidations it had already received, without any instance seeing an
error. So the poll also asks Redis who it is (``identity``: its ``run_id``); when the answer
changes, this instance bumps the epoch. Until that poll (at most ``interval``) an instance may
still serve an entry the restarted Redis brought back.

A bump drops the whole cache (cold start for a few minutes). That is the price of never serving a
stale list; it only happens when Redis fails, when the caches are being skipped anyway. Concurrent
bumps of one instance are coalesced: one ``UPDATE`` covers every failure that happened before it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from favorites.tasks import cancel_and_wait, stop_if_cancelled

log = logging.getLogger("favorites.cache")
#: Seconds between two WARN lines about epoch bumps.
_REPORT_EVERY = 60.0


class EpochStore(Protocol):
    async def read(self) -> int: ...

    async def bump(self, floor: int) -> int: ...


class CacheEpoch:
    def __init__(
        self,
        store: EpochStore,
        *,
        interval: float = 1.0,
        max_staleness: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        identity: Callable[[], Awaitable[str | None]] | None = None,
    ):
        self._store = store
        self._identity = identity
        #: The Redis server's identity at the last poll that could ask it.
        self._server: str | None = None
        self._identity_failing = False
        self._interval = interval
        self._max_staleness = max_staleness
        self._clock = clock
        self.current = 0
        #: When ``current`` last rose: a read that started before may return the value from
        #: before (its snapshot predates this instance's own bump), which is not the row going
        #: back.
        self._raised_at = float("-inf")
        self._synced_at = float("-inf")  # when the last successful read or bump *started*
        self._required_after = float("-inf")
        self._bump_failed = False
        self._pending_round: asyncio.Task[None] | None = None
        self._running_round: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Bumps done by this instance (for tests and logs).
        self.bumps = 0
        self._reported_at = float("-inf")
        self._reported_bumps = 0

    def __repr__(self) -> str:
        return f"CacheEpoch(current={self.current}, fresh={self.fresh})"

    @property
    def fresh(self) -> bool:
        """May Redis be used now: the epoch is known, recent, and no bump is owed."""
        synced = self._synced_at
        return (not self._bump_failed and synced > self._required_after
                and self._clock() - synced < self._max_staleness)

    def require_sync(self) -> None:
        """Do not trust the epoch until it has been read again (Redis just came back)."""
        self._required_after = self._clock()
        self._wake.set()

    async def sync(self) -> None:
        started = self._clock()
        epoch = await self._store.read()
        if epoch < self.current and started >= self._raised_at:
            # The row went back (deleted, or the database restored): entries under the epochs
            # between may predate invalidations it lost. Move every instance past them.
            log.warning("cache epoch went back from %d to %d; bumping past it",
                        self.current, epoch)
            await self.bump()
            return
        self._advance(epoch, started)

    async def bump(self) -> None:
        """Retire every entry written so far; never raises (a failure is retried by the loop and
        keeps this instance off Redis meanwhile)."""
        round_ = self._pending_round
        if round_ is None:
            round_ = self._pending_round = asyncio.ensure_future(self._bump_round())
        await asyncio.shield(round_)

    async def _bump_round(self) -> None:
        previous = self._running_round
        if previous is not None:
            await asyncio.wait([previous])
        # Callers arriving from now on wait for the next round: this UPDATE may have started
        # before their invalidation failed.
        self._running_round, self._pending_round = self._pending_round, None
        started = self._clock()
        try:
            epoch = await self._store.bump(self.current)
        except Exception:
            # Retried by the poll loop at its next tick, not at once: waking it here made a
            # failing database take a retry, and an ERROR line, per turn of the event loop.
            if not self._bump_failed:  # once per streak
                log.exception("cache epoch bump failed: this instance skips Redis until a "
                              "retry succeeds")
            self._bump_failed = True
            return
        self.bumps += 1
        self._bump_failed = False
        self._advance(epoch, started)
        # During an outage every write bumps (coalesced, a few a second): one WARN a minute
        # with the count, the others DEBUG, so an outage is not a line per write.
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY:
            log.warning("cache epoch bumped to %d after an undelivered invalidation or a new "
                        "Redis server; bumps since the last such line: %d", epoch,
                        self.bumps - self._reported_bumps)
            self._reported_at, self._reported_bumps = now, self.bumps
        else:
            log.debug("cache epoch bumped to %d", epoch)

    async def check_server(self) -> None:
        """Bump when Redis is not the server it was at the last poll; never raises. An unreachable
        Redis (``identity`` gives None) is no answer, and no news: the breaker and the bumps of
        undelivered invalidations cover an outage."""
        if self._identity is None:
            return
        try:
            seen = await self._identity()
        except Exception:
            if not self._identity_failing:  # once per streak: INFO not allowed, say
                log.warning("cannot ask Redis which server it is; a restart from an older "
                            "snapshot is not noticed until it can", exc_info=True)
            self._identity_failing = True
            return
        if seen is None:
            return
        self._identity_failing = False
        before, self._server = self._server, seen
        if before is not None and seen != before:
            log.warning("Redis is a new server (%s, was %s): its data may predate invalidations",
                        seen, before)
            await self.bump()

    def _advance(self, epoch: int, started: float) -> None:
        if epoch > self.current:
            self.current = epoch
            self._raised_at = self._clock()
        self._synced_at = max(self._synced_at, started)

    async def start(self) -> None:
        """Never blocks start-up: until the first read succeeds, Redis is simply not used."""
        with contextlib.suppress(Exception):
            await self.sync()
        await self.check_server()
        self._task = asyncio.create_task(self._run(), name="cache-epoch-sync")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for round_ in (self._pending_round, self._running_round):
            if round_ is not None and not round_.done():
                await asyncio.wait([round_], timeout=5)

    async def _run(self) -> None:
        failing = False
        while True:
            stop_if_cancelled()
            # Not ``asyncio.wait_for``: on Python 3.11, when the wait ends in the same turn of
            # the loop as a cancellation (``require_sync`` during shutdown), it returns and the
            # cancellation is lost, so ``stop`` would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._bump_failed:
                    await self.bump()
                else:
                    await self.sync()
                    await self.check_server()
            except Exception:  # keep polling; Redis is skipped once the epoch is too old
                if not failing:  # once per streak, not once a second
                    log.warning("cannot read the cache epoch; caches bypassed until it can be "
                                "read", exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("cache epoch readable again (%d)", self.current)
                failing = False
