"""Unit of work over one pooled connection: commit on ``commit()``, roll back otherwise.

The factory is where replica routing happens (see ``replicas``): read-only units of work may be
served by a replica, writes and the reads of a user who just wrote go to the primary. On
PostgreSQL the hot statements go on the driver connection, and a writing unit of work's
transaction is the driver's (see ``driver``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from favorites.adapters.db.checkout import Checkout, check_out
from favorites.adapters.db.driver import (
    DriverAuditRepository,
    DriverConnection,
    DriverFavoritesRepository,
    DriverProductsRepository,
    DriverRevokedTokenRepository,
    DriverTransaction,
    InTransaction,
)
from favorites.adapters.db.recent_writers import InProcessRecentWriters, RecentWriters
from favorites.adapters.db.replicas import ReadRouter, ReplicaSet
from favorites.adapters.db.repository import (
    SqlAuditRepository,
    SqlFavoritesRepository,
    SqlProductsRepository,
    SqlRefreshTokenRepository,
    SqlRevokedTokenRepository,
)

log = logging.getLogger("favorites.db")


class SqlUnitOfWork:
    favorites: SqlFavoritesRepository
    products: SqlProductsRepository
    audit: SqlAuditRepository
    refresh_tokens: SqlRefreshTokenRepository
    revoked_tokens: SqlRevokedTokenRepository

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        readonly: bool,
        user_id: UUID | None = None,
        router: ReadRouter | None = None,
    ):
        self._engine = engine
        self._readonly = readonly
        self._user_id = user_id
        self._router = router
        self._conn: Checkout | None = None
        self._driver: DriverConnection | None = None
        self._transaction: DriverTransaction | None = None
        self._committed = False
        self._also_wrote: list[UUID] = []

    def wrote_for(self, user_ids: Iterable[UUID]) -> None:
        self._also_wrote.extend(user_ids)

    async def __aenter__(self) -> Self:
        if self._router is None:
            conn = await check_out(self._engine)
        else:
            conn = await self._router.connect(readonly=self._readonly, user_id=self._user_id)
        self._conn = conn
        dialect = conn.dialect_name
        if dialect == "postgresql":
            self._driver = driver = DriverConnection.of(conn)
            if not self._readonly:
                self._transaction = driver.begin_lazily()
            # Statements through SQLAlchemy begin the driver's transaction first, too.
            through = InTransaction(conn, driver)
            self.favorites = DriverFavoritesRepository(through, driver)
            self.products = DriverProductsRepository(through, driver)
            self.audit = DriverAuditRepository(through, driver)
            self.revoked_tokens = DriverRevokedTokenRepository(through, driver)
            self.refresh_tokens = SqlRefreshTokenRepository(through, dialect)
        else:
            sql = conn.sqlalchemy()
            if not self._readonly:
                await sql.execution_options(sqlite_immediate=True)
            self.favorites = SqlFavoritesRepository(sql, dialect)
            self.products = SqlProductsRepository(sql, dialect)
            self.audit = SqlAuditRepository(sql, dialect)
            self.revoked_tokens = SqlRevokedTokenRepository(sql, dialect)
            self.refresh_tokens = SqlRefreshTokenRepository(sql, dialect)
        return self

    async def commit(self) -> None:
        assert self._conn is not None
        if self._conn.in_transaction():  # SQLite's transaction, or SQLAlchemy's savepoint
            await self._conn.sqlalchemy().commit()
        if self._transaction is not None:
            await self._transaction.commit()
        self._committed = True

    async def _release(self, conn: Checkout) -> None:
        """Roll back whatever is open and give the connection back (or drop it if it broke)."""
        try:
            if self._driver is not None and self._driver.broken:
                await conn.invalidate()  # closed, never handed to another request
                return
            if not self._committed:
                if conn.in_transaction():
                    await conn.sqlalchemy().rollback()
                if self._transaction is not None and self._transaction.active:
                    await self._transaction.rollback()
        except BaseException:
            # A connection left inside a transaction must never go back to the pool.
            await conn.invalidate()
            raise
        finally:
            await conn.release()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await self._release(conn)
        except Exception:
            if exc is None:
                raise
            # The block's own error goes on, not the rollback's: a cancellation mid-statement
            # closes asyncpg's connection, so the rollback fails, and a caller that handles its
            # errors would take a shutdown for a database outage. The connection is dropped.
            log.debug("rollback after %r failed", exc, exc_info=True)
        # After the connection is back in the pool, before the caller answers: the user's
        # next reads skip the replicas for a while (read-your-writes).
        if self._committed and not self._readonly and self._router is not None:
            if self._user_id is not None:
                await self._router.wrote(self._user_id)
            for user_id in self._also_wrote:
                await self._router.wrote(user_id)


class SqlUnitOfWorkFactory:
    """Builds units of work and decides which server each one talks to.

    Without replicas everything uses ``primary`` and no writer is tracked. With replicas,
    ``factory(readonly=True, user_id=u)`` goes to a replica unless ``u`` committed a write through
    ``factory(user_id=u)`` within the read-your-writes window.
    """

    def __init__(
        self,
        primary: AsyncEngine,
        *,
        replicas: Sequence[AsyncEngine] | ReplicaSet = (),
        recent_writers: RecentWriters | None = None,
        replica_retry_seconds: float = 10.0,
        pool_minimum: int = 10,
        _router: ReadRouter | None = None,
    ):
        self.primary = primary
        self.pool_minimum = pool_minimum
        if _router is None:
            if not isinstance(replicas, ReplicaSet):
                replicas = ReplicaSet(replicas, retry_after=replica_retry_seconds)
            if recent_writers is None:
                recent_writers = InProcessRecentWriters(5.0)
            _router = ReadRouter(primary, replicas, recent_writers)
        self._router = _router

    @property
    def replicas(self) -> tuple[AsyncEngine, ...]:
        """Every replica engine (healthy or not), e.g. for pool metrics."""
        return self._router.replicas.engines

    @property
    def replica_set(self) -> ReplicaSet:
        return self._router.replicas

    @property
    def recent_writers(self) -> RecentWriters:
        return self._router.writers

    def __call__(self, *, readonly: bool = False, user_id: UUID | None = None) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.primary, readonly=readonly, user_id=user_id, router=self._router)

    def on_primary(self) -> SqlUnitOfWorkFactory:
        """A factory whose reads always go to the primary (writes are still recorded).

        For reads that must not lag: the revocation list (a missed revocation would fail open)
        and product existence checked while adding a favorite.
        """
        return SqlUnitOfWorkFactory(self.primary, pool_minimum=self.pool_minimum,
                                    _router=_PinnedRouter(self._router))

    async def warm(self) -> None:
        """Open each PostgreSQL pool's minimum of connections now rather than on first requests.

        Best effort: a server that is down is logged and left to the readiness probe.
        """
        for engine in (self.primary, *self.replicas):
            if engine.dialect.name != "postgresql":
                continue
            size = min(self.pool_minimum, getattr(engine.pool, "size", lambda: 0)())
            results = await asyncio.gather(
                *(engine.connect() for _ in range(size)), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            for result in results:
                if isinstance(result, AsyncConnection):
                    await result.close()  # back to the pool, which keeps it
            if failed:
                log.warning("could not pre-open %d connection(s) to %s: %s", len(failed),
                            engine.url.render_as_string(hide_password=True),
                            type(failed[0]).__name__)

    async def dispose(self) -> None:
        """Close the pools of the primary and every replica, and the writers' Redis client."""
        for engine in (self.primary, *self.replicas):
            await engine.dispose()
        await self._router.writers.aclose()


class _PinnedRouter(ReadRouter):
    """Same replicas and writers (so writes are still recorded), but every read on the primary."""

    def __init__(self, router: ReadRouter):
        super().__init__(router.primary, router.replicas, router.writers)

    async def connect(self, *, readonly: bool, user_id: UUID | None) -> Checkout:
        return await check_out(self.primary)
