"""The hot statements on PostgreSQL, sent on the asyncpg connection itself.

Measured on the 10 M-row bench database, 32 reads at a time: a first page through SQLAlchemy's
``execute`` cost about 200 µs of CPU, the same statement on the pooled connection's driver about
75 µs. The difference is SQLAlchemy's statement and result machinery and its greenlet bridge, paid
on every cache miss, which is most of what a read that reaches the database costs this process.

So units of work on PostgreSQL keep SQLAlchemy's pool (sizes, replica routing, pre-ping, pool
metrics) but send the statements of the hot paths with asyncpg, whose own per-connection cache
prepares each one once. A read-only unit of work runs outside a transaction (each statement
commits on its own: one round trip per read). A writing one runs in a transaction of the driver's
(``DriverTransaction``); the statements that are not below (bulk changes, erasure, tokens) still
go through SQLAlchemy Core on the same connection, where asyncpg nests them in a savepoint of
that transaction, so a unit of work stays all or nothing whichever path its statements take. The
statements below answer exactly what ``repository``'s do; the repository contract tests run both
against the same data.

Driver errors are raised as SQLAlchemy's, with the driver's exception (and its SQLSTATE) as
``orig``, so the HTTP layer tells "the database cannot answer" (503) from a bug (500) as it
always has. A connection that broke is invalidated, never handed to the next request.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from favorites.adapters.db.repository import (
    FIRST_PAGE_JSON_SQL,
    SqlAuditRepository,
    SqlFavoritesRepository,
    SqlProductsRepository,
    SqlRevokedTokenRepository,
    advisory_key,
)
from favorites.domain.models import AuditEntry, Favorite
from favorites.domain.pages import FirstPage

#: ``observe(statement)`` -> a context manager around one statement (metrics and a span).
Observe = Callable[[str], AbstractContextManager[object]]

_observers: weakref.WeakKeyDictionary[Engine, Observe] = weakref.WeakKeyDictionary()


def observe_statements(engine: Engine, observe: Observe) -> None:
    """How the statements sent on ``engine``'s driver connections are measured and traced
    (``observability.db`` registers itself here; SQLAlchemy's own events never see them)."""
    _observers[engine] = observe


def _unobserved(_statement: str) -> AbstractContextManager[object]:
    return nullcontext()


# ``ix_favorites_user_created`` is (user_id, created_at DESC, product_id ASC): each page is a
# walk of that index, no sort (tests/integration/db/test_queries.py shows the plans).
FIRST_PAGE_JSON = FIRST_PAGE_JSON_SQL.replace(":user_id", "$1").replace(":limit", "$2")
FIRST_PAGE = """
SELECT product_id, created_at FROM favorites WHERE user_id = $1
ORDER BY created_at DESC, product_id ASC LIMIT $2
"""
NEXT_PAGE = """
SELECT product_id, created_at FROM favorites
WHERE user_id = $1 AND created_at <= $2
  AND (created_at < $2 OR (created_at = $2 AND product_id > $3))
ORDER BY created_at DESC, product_id ASC LIMIT $4
"""
GET = "SELECT created_at FROM favorites WHERE user_id = $1 AND product_id = $2"
COUNT_FOR_USER = "SELECT count(*) FROM favorites WHERE user_id = $1"
CONTAINS = "SELECT product_id FROM favorites WHERE user_id = $1 AND product_id = ANY($2::uuid[])"
COUNT_FOR_PRODUCT = "SELECT count(*) FROM favorites WHERE product_id = $1"
EXISTING_PRODUCTS = ("SELECT product_id FROM products"
                     " WHERE product_id = ANY($1::uuid[]) AND deleted_at IS NULL")
ACTIVE_REVOCATIONS = ("SELECT jti, expires_at FROM revoked_tokens"
                      " WHERE revoked_at >= $1 AND expires_at > $2")

LOCK_USER = "SELECT pg_advisory_xact_lock($1)"
INSERT = ("INSERT INTO favorites (user_id, product_id, created_at) VALUES ($1, $2, $3)"
          " ON CONFLICT (user_id, product_id) DO NOTHING RETURNING user_id")
DELETE = "DELETE FROM favorites WHERE user_id = $1 AND product_id = $2 RETURNING product_id"
RECORD_AUDIT = ("INSERT INTO audit_log (occurred_at, actor_id, actor_type, action,"
                " subject_user_id, product_id, request_id, outcome)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")

#: Errors after which the connection cannot be trusted with another statement.
_BROKEN = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError)


class DriverConnection:
    """One pooled connection's asyncpg side, for the repositories of one unit of work."""

    def __init__(self, driver: asyncpg.Connection, observe: Observe):
        self._driver = driver
        self._observe = observe
        self.broken = False

    @classmethod
    async def of(cls, conn: AsyncConnection) -> DriverConnection:
        # Just checked out, so the pooled connection is there and reaching it needs no I/O;
        # ``get_raw_connection()`` would cost a greenlet (about 11 µs here) to return it.
        sync = conn.sync_connection
        assert sync is not None, "a started connection"
        pooled = sync.connection
        observe = _observers.get(conn.sync_engine, _unobserved)
        return cls(pooled.driver_connection, observe)

    async def fetch(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        try:
            with self._observe(statement):
                rows: list[asyncpg.Record] = await self._driver.fetch(statement, *args)
                return rows
        except Exception as exc:
            raise self._translate(exc, statement, args) from exc

    async def fetchval(self, statement: str, *args: Any) -> Any:
        try:
            with self._observe(statement):
                return await self._driver.fetchval(statement, *args)
        except Exception as exc:
            raise self._translate(exc, statement, args) from exc

    async def execute(self, statement: str, *args: Any) -> None:
        try:
            with self._observe(statement):
                await self._driver.execute(statement, *args)
        except Exception as exc:
            raise self._translate(exc, statement, args) from exc

    async def begin(self) -> DriverTransaction:
        transaction = DriverTransaction(self)
        await transaction.run("start", "BEGIN")
        return transaction

    def _translate(self, exc: Exception, statement: str, args: Sequence[Any]) -> Exception:
        if isinstance(exc, _BROKEN):
            self.broken = True
        if isinstance(exc, asyncpg.InterfaceError):
            return sa_exc.InterfaceError(statement, list(args), exc, connection_invalidated=True)
        if isinstance(exc, asyncpg.PostgresError):
            return sa_exc.DBAPIError(statement, list(args), exc,
                                     connection_invalidated=self.broken)
        return exc  # OSError, TimeoutError: the HTTP layer knows them as they are


class DriverTransaction:
    """The unit of work's transaction, owned by asyncpg (SQLAlchemy's own nest inside it)."""

    def __init__(self, connection: DriverConnection):
        self._connection = connection
        self._transaction = connection._driver.transaction()
        self.active = False

    async def run(self, step: str, statement: str) -> None:
        # A COMMIT or ROLLBACK ends the transaction even when it fails (the server rolls back a
        # COMMIT it refuses), so nothing is left to roll back afterwards.
        self.active = False
        try:
            with self._connection._observe(statement):
                await getattr(self._transaction, step)()
        except Exception as exc:
            raise self._connection._translate(exc, statement, ()) from exc
        self.active = step == "start"

    async def commit(self) -> None:
        await self.run("commit", "COMMIT")

    async def rollback(self) -> None:
        await self.run("rollback", "ROLLBACK")


class DriverFavoritesRepository(SqlFavoritesRepository):
    """Reads, and the writes of adding and removing one favorite, on the driver; the rest falls
    through to SQLAlchemy (see the module doc)."""

    def __init__(self, conn: AsyncConnection, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def lock_user(self, user_id: UUID) -> None:
        await self._db.fetchval(LOCK_USER, advisory_key(user_id))

    async def insert(self, favorite: Favorite) -> bool:
        inserted = await self._db.fetchval(INSERT, favorite.user_id, favorite.product_id,
                                           favorite.created_at)
        return inserted is not None

    async def delete(self, user_id: UUID, product_id: UUID) -> bool:
        return await self._db.fetchval(DELETE, user_id, product_id) is not None

    async def get(self, user_id: UUID, product_id: UUID) -> Favorite | None:
        created_at = await self._db.fetchval(GET, user_id, product_id)
        return None if created_at is None else Favorite(user_id, product_id, created_at)

    async def page(
        self, user_id: UUID, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Favorite]:
        if after is None:
            rows = await self._db.fetch(FIRST_PAGE, user_id, limit)
        else:
            rows = await self._db.fetch(NEXT_PAGE, user_id, after[0], after[1], limit)
        return [Favorite(user_id, row[0], row[1]) for row in rows]

    async def first_page(self, user_id: UUID, limit: int) -> FirstPage:
        rendered: str | None = await self._db.fetchval(FIRST_PAGE_JSON, user_id, limit)
        return FirstPage.rendered_as(user_id, rendered.encode() if rendered else b"")

    async def count_for_user(self, user_id: UUID) -> int:
        return int(await self._db.fetchval(COUNT_FOR_USER, user_id))

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        rows = await self._db.fetch(CONTAINS, user_id, list(product_ids))
        return {row[0] for row in rows}

    async def count_for_product(self, product_id: UUID) -> int:
        return int(await self._db.fetchval(COUNT_FOR_PRODUCT, product_id))


class DriverAuditRepository(SqlAuditRepository):
    def __init__(self, conn: AsyncConnection, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def record(self, entry: AuditEntry, at: datetime) -> None:
        await self._db.execute(RECORD_AUDIT, at, entry.actor_id, entry.actor_type,
                               entry.action.value, entry.subject_user_id, entry.product_id,
                               entry.request_id, entry.outcome)


class DriverProductsRepository(SqlProductsRepository):
    def __init__(self, conn: AsyncConnection, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        rows = await self._db.fetch(EXISTING_PRODUCTS, list(product_ids))
        return {row[0] for row in rows}


class DriverRevokedTokenRepository(SqlRevokedTokenRepository):
    def __init__(self, conn: AsyncConnection, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def active_since(self, since: datetime, now: datetime) -> list[tuple[str, datetime]]:
        rows = await self._db.fetch(ACTIVE_REVOCATIONS, since, now)
        return [(row[0], row[1]) for row in rows]
