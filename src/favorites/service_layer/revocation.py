"""Revoked access tokens, checked on every request without I/O on the request path.

Each instance keeps the unexpired revoked ``jti``s in memory and pulls new ones from the database
(the source of truth) every ``interval`` seconds. The instance that handles a logout knows at once;
the others within one interval. If the database cannot be read for ``max_staleness`` seconds the
list is stale and every token check fails closed (503): revocation never fails open.

"New ones" are those stamped at or after the newest stamp seen so far minus ``overlap``. A
revocation is stamped when it is written, in the database's clock on PostgreSQL (so the
instances' clocks do not matter), and becomes visible when its transaction commits: one
committed more than ``overlap`` after its stamp (a transaction held that long; each statement
is bounded by the 5 s statement timeout) would be older than every later window. So every
``full_every``-th pull reads every unexpired revocation instead, bounding how late one can be
learnt. Adds do not rely on this list at all: they check the database under the user's lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from favorites.domain.errors import DependencyUnavailable
from favorites.service_layer.ports import Clock, UnitOfWorkFactory
from favorites.tasks import cancel_and_wait, stop_if_cancelled

log = logging.getLogger("favorites.revocation")


class RevocationList:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        interval: float = 1.0,
        max_staleness: float = 30.0,
        leeway: float = 0.0,
        overlap: float = 60.0,
        full_every: int = 30,
    ):
        self._uow = uow
        self._clock = clock
        self._interval = interval
        self._max_staleness = max_staleness
        #: Tokens are accepted up to this long after ``exp``: a revocation must last as long.
        self._leeway = timedelta(seconds=leeway)
        self._overlap = timedelta(seconds=overlap)
        self._full_every = full_every
        self._revoked: dict[str, int] = {}
        #: The newest stamp seen (the database's clock); None until a revocation is seen.
        self._newest: datetime | None = None
        self._pulls = 0
        self._failures = 0
        self._synced_at = float("-inf")  # stale until the first successful sync
        self._task: asyncio.Task[None] | None = None

    def revoke_locally(self, jti: str, expires_at: int) -> None:
        self._revoked[jti] = expires_at

    def is_revoked(self, jti: str) -> bool:
        if time.monotonic() - self._synced_at > self._max_staleness:
            raise DependencyUnavailable("token revocation list is unavailable", retry_after=5)
        return jti in self._revoked

    async def sync(self) -> None:
        now = self._clock.now()
        newest = self._newest
        if newest is None or self._pulls % self._full_every == 0:
            since = datetime.min.replace(tzinfo=now.tzinfo)  # every unexpired revocation
        else:
            since = newest - self._overlap
        async with self._uow(readonly=True) as uow:
            rows = await uow.revoked_tokens.active_since(since, now - self._leeway)
        for jti, expires_at, revoked_at in rows:
            self._revoked[jti] = int(expires_at.timestamp())
            if self._newest is None or revoked_at > self._newest:
                self._newest = revoked_at
        cutoff = (now - self._leeway).timestamp()
        for jti in [j for j, exp in self._revoked.items() if exp < cutoff]:
            del self._revoked[jti]
        self._pulls += 1
        self._synced_at = time.monotonic()

    async def start(self) -> None:
        """Never blocks start-up: while the database is down, token checks answer 503."""
        try:
            await self.sync()
        except Exception:
            log.warning("revocation list not loaded at start-up; retrying", exc_info=True)
        self._task = asyncio.create_task(self._run(), name="revocation-sync")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except Exception:  # keep syncing; is_revoked fails closed once too stale
                self._failures += 1
                if self._failures == 1:  # once per outage, not every second of it
                    log.warning("revocation sync failed; retrying every %g s", self._interval,
                                exc_info=True)
                continue
            if self._failures:
                log.info("revocation sync recovered after %d failed attempts", self._failures,
                         extra={"failures": self._failures})
                self._failures = 0
