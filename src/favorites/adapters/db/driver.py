"""The read-only statements on PostgreSQL, sent on the asyncpg connection itself.

Measured on the 10 M-row bench database, 32 reads at a time: a first page through SQLAlchemy's
``execute`` cost about 200 µs of CPU, the same statement on the pooled connection's driver about
75 µs. The difference is SQLAlchemy's statement and result machinery and its greenlet bridge, paid
on every cache miss, which is most of what a read that reaches the database costs this process.

So read-only units of work on PostgreSQL keep SQLAlchemy's pool (sizes, replica routing, pre-ping,
pool metrics) but send their statements with asyncpg, whose own per-connection cache prepares
each one once. Outside a transaction every statement commits on its own: a read costs one round
trip, as ``AUTOCOMMIT`` gave before. Writes stay on SQLAlchemy Core, in transactions; the
statements below answer exactly what ``repository``'s do, and the repository contract tests run
both against the same data.

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
    SqlFavoritesRepository,
    SqlProductsRepository,
    SqlRevokedTokenRepository,
)
from favorites.domain.models import Favorite
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
        pooled = await conn.get_raw_connection()
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

    def _translate(self, exc: Exception, statement: str, args: Sequence[Any]) -> Exception:
        if isinstance(exc, _BROKEN):
            self.broken = True
        if isinstance(exc, asyncpg.InterfaceError):
            return sa_exc.InterfaceError(statement, list(args), exc, connection_invalidated=True)
        if isinstance(exc, asyncpg.PostgresError):
            return sa_exc.DBAPIError(statement, list(args), exc,
                                     connection_invalidated=self.broken)
        return exc  # OSError, TimeoutError: the HTTP layer knows them as they are


class DriverFavoritesRepository(SqlFavoritesRepository):
    """The reads on the driver; anything else (a write on a read-only unit of work is a bug, but
    stays correct) falls through to SQLAlchemy."""

    def __init__(self, conn: AsyncConnection, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

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
