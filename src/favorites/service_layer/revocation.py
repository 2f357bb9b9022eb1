"""Revoked access tokens, checked on every request without I/O on the request path.

Each instance keeps the unexpired revoked ``jti``s in memory and pulls new ones from the database
(the source of truth) every ``interval`` seconds. The instance that handles a logout knows at once;
the others within one interval. If the database cannot be read for ``max_staleness`` seconds the
list is stale and every token check fails closed (503): revocation never fails open.
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
    ):
        self._uow = uow
        self._clock = clock
        self._interval = interval
        self._max_staleness = max_staleness
        #: Tokens are accepted up to this long after ``exp``: a revocation must last as long.
        self._leeway = timedelta(seconds=leeway)
        self._revoked: dict[str, int] = {}
        self._since: datetime | None = None
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
        # Overlap the window so a revocation committed just before our last read is not missed.
        since = (self._since - timedelta(seconds=5)) if self._since else datetime.min.replace(
            tzinfo=now.tzinfo
        )
        async with self._uow(readonly=True) as uow:
            rows = await uow.revoked_tokens.active_since(since, now - self._leeway)
        for jti, expires_at in rows:
            self._revoked[jti] = int(expires_at.timestamp())
        cutoff = (now - self._leeway).timestamp()
        for jti in [j for j, exp in self._revoked.items() if exp < cutoff]:
            del self._revoked[jti]
        self._since = now
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
                log.warning("revocation sync failed", exc_info=True)
