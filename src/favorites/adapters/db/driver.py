"""The hot statements on PostgreSQL, sent on the asyncpg connection itself.

Measured on the 10 M-row bench database, 32 reads at a time: a first page through SQLAlchemy's
``execute`` cost about 200 µs of CPU, the same statement on the pooled connection's driver about
75 µs. The difference is SQLAlchemy's statement and result machinery and its greenlet bridge, paid
on every cache miss, which is most of what a read that reaches the database costs this process.

So units of work on PostgreSQL keep SQLAlchemy's pool (sizes, replica routing, pre-ping, pool
metrics) but send the statements of the hot paths with asyncpg, whose own per-connection cache
prepares each one once. A read-only unit of work runs outside a transaction (each statement
commits on its own: one round trip per read). A writing one runs in a transaction of the driver's
(``DriverTransaction``), begun just before its first statement; the statements that are not below
(bulk changes, erasure, tokens) still go through SQLAlchemy Core on the same connection
(``InTransaction``), where asyncpg nests them in a savepoint of that transaction, so a unit of
work stays all or nothing whichever path its statements take. Adding and removing one favorite
are each one statement that is atomic by itself (``ADD``, ``REMOVE``): alone in their unit of
work they need no transaction, so BEGIN and COMMIT are never sent. The statements below answer
exactly what ``repository``'s do; the repository contract tests run both against the same data.

Driver errors are raised as SQLAlchemy's, with the driver's exception (and its SQLSTATE) as
``orig``, so the HTTP layer tells "the database cannot answer" (503) from a bug (500) as it
always has. A connection that broke is invalidated, never handed to the next request.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from favorites.adapters.db.checkout import Checkout
from favorites.adapters.db.repository import (
    FIRST_PAGE_JSON_SQL,
    Executes,
    SqlAuditRepository,
    SqlFavoritesRepository,
    SqlProductsRepository,
    SqlRevokedTokenRepository,
    advisory_key,
    first_page_from_database,
)
from favorites.domain.models import AddOutcome, AuditEntry, Favorite
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
EXISTING_PRODUCTS_FOR_SHARE = EXISTING_PRODUCTS + " FOR SHARE"
DELETED_SINCE = ("SELECT product_id FROM products"
                 " WHERE product_id = ANY($1::uuid[]) AND deleted_at >= $2")
ACTIVE_REVOCATIONS = ("SELECT jti, expires_at, revoked_at FROM revoked_tokens"
                      " WHERE revoked_at >= $1 AND expires_at > $2")

LOCK_USER = "SELECT pg_advisory_xact_lock($1)"
INSERT = ("INSERT INTO favorites (user_id, product_id, created_at) VALUES ($1, $2, $3)"
          " ON CONFLICT (user_id, product_id) DO NOTHING RETURNING user_id")
DELETE = "DELETE FROM favorites WHERE user_id = $1 AND product_id = $2 RETURNING product_id"
RECORD_AUDIT = ("INSERT INTO audit_log (occurred_at, actor_id, actor_type, action,"
                " subject_user_id, product_id, request_id, outcome)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
#: Adding one favorite: product check, lock, look, count, insert and audit in one round trip
#: (migration 0007: with the revoked-token check).
ADD = ("SELECT result, stored_at"
       " FROM favorites_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
#: Removing one favorite and its audit row in one statement, so one round trip and atomic alone.
REMOVE = """
WITH removed AS (
    DELETE FROM favorites WHERE user_id = $1 AND product_id = $2 RETURNING product_id)
INSERT INTO audit_log (occurred_at, actor_id, actor_type, action, subject_user_id, product_id,
                       request_id, outcome)
SELECT $3::timestamptz, $4::varchar, $5::varchar, $6::varchar, $7::varchar, product_id,
       $8::varchar, $9::varchar
FROM removed
RETURNING product_id
"""
#: What each statement does, where its first word does not say it (``observability.db``).
OPERATIONS = {ADD: "insert", REMOVE: "delete"}

#: Errors after which the connection cannot be trusted with another statement.
_BROKEN = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError)


class DriverConnection:
    """One pooled connection's asyncpg side, for the repositories of one unit of work.

    A writing unit of work's transaction begins with its first statement (``begin_lazily``), not
    when the connection is checked out: a unit of work whose only statement is atomic by itself
    (``fetchrow_alone``) then needs no BEGIN and no COMMIT, one round trip instead of three.
    """

    def __init__(self, driver: asyncpg.Connection, observe: Observe):
        self._driver = driver
        self._observe = observe
        self.broken = False
        self._pending: DriverTransaction | None = None
        #: Why no statement may be sent any more (a statement already committed by itself, or
        #: the unit of work committed): sent anyway, it would commit alone, unseen.
        self._refused: str | None = None

    @classmethod
    def of(cls, checkout: Checkout) -> DriverConnection:
        return cls(checkout.driver_connection,
                   _observers.get(checkout.engine.sync_engine, _unobserved))

    def begin_lazily(self) -> DriverTransaction:
        """The unit of work's transaction, begun (BEGIN sent) just before its first statement."""
        transaction = self._pending = DriverTransaction(self)
        return transaction

    async def before_statement(self) -> None:
        """Called before every statement of the unit of work: begins the pending transaction."""
        self._refuse()
        if self._pending is not None:
            transaction, self._pending = self._pending, None
            await transaction.run("start", "BEGIN")

    def _refuse(self) -> None:
        if self._refused is not None:
            raise RuntimeError(self._refused)

    def committed(self) -> None:
        """The unit of work has committed (or had nothing to commit): a statement after that
        would run outside its transaction, or begin one that nothing commits."""
        self._pending = None
        self._refused = "the unit of work has committed: no statement may follow"

    async def fetch(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        if self._pending is not None or self._refused is not None:
            await self.before_statement()
        rows: list[asyncpg.Record] = await self._send(self._driver.fetch, statement, args)
        return rows

    async def fetchval(self, statement: str, *args: Any) -> Any:
        if self._pending is not None or self._refused is not None:
            await self.before_statement()
        return await self._send(self._driver.fetchval, statement, args)

    async def execute(self, statement: str, *args: Any) -> None:
        if self._pending is not None or self._refused is not None:
            await self.before_statement()
        await self._send(self._driver.execute, statement, args)

    async def fetchrow_alone(self, statement: str, *args: Any) -> asyncpg.Record | None:
        """A statement that is atomic by itself: sent without BEGIN when it is the unit of
        work's first, and then its only one (it has committed when it returns); inside the
        transaction when statements came before it."""
        self._refuse()
        if self._pending is not None:
            self._pending = None
            self._refused = ("a statement that committed by itself must be the only one of its"
                             " unit of work")
        row: asyncpg.Record | None = await self._send(self._driver.fetchrow, statement, args)
        return row

    async def _send(self, method: Callable[..., Awaitable[Any]], statement: str,
                    args: tuple[Any, ...]) -> Any:
        """One statement, measured and traced; the driver's errors raised as SQLAlchemy's."""
        try:
            with self._observe(statement):
                return await method(statement, *args)
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


class InTransaction:
    """The unit of work's SQLAlchemy connection for the statements that go through SQLAlchemy:
    the first of them begins the driver's pending transaction too, so SQLAlchemy's own nests
    in it (a savepoint) as it would have if BEGIN had been sent at check-out."""

    __slots__ = ("_checkout", "_driver")

    def __init__(self, checkout: Checkout, driver: DriverConnection):
        self._checkout = checkout
        self._driver = driver

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        await self._driver.before_statement()
        return await self._checkout.sqlalchemy().execute(statement, parameters)


class DriverTransaction:
    """The unit of work's transaction, owned by asyncpg (SQLAlchemy's own nest inside it)."""

    def __init__(self, connection: DriverConnection):
        self._connection = connection
        self._transaction = connection._driver.transaction()
        self.active = False
        self._started = False

    async def run(self, step: str, statement: str) -> None:
        # A COMMIT or ROLLBACK ends the transaction even when it fails (the server rolls back a
        # COMMIT it refuses), so nothing is left to roll back afterwards.
        self.active = False
        self._started = self._started or step == "start"
        try:
            with self._connection._observe(statement):
                await getattr(self._transaction, step)()
        except Exception as exc:
            raise self._connection._translate(exc, statement, ()) from exc
        self.active = step == "start"

    async def commit(self) -> None:
        if self._started:  # never begun: no statement needed it, nothing to commit
            await self.run("commit", "COMMIT")
        self._connection.committed()

    async def rollback(self) -> None:
        await self.run("rollback", "ROLLBACK")


class DriverFavoritesRepository(SqlFavoritesRepository):
    """Reads, and the writes of adding and removing one favorite, on the driver; the rest falls
    through to SQLAlchemy (see the module doc)."""

    def __init__(self, conn: Executes, driver: DriverConnection):
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

    async def add(self, favorite: Favorite, limit: int, audit: AuditEntry, *,
                  require_product: bool = False,
                  token_id: str | None = None) -> tuple[AddOutcome, Favorite]:
        row = await self._db.fetchrow_alone(
            ADD, advisory_key(favorite.user_id), favorite.user_id, favorite.product_id,
            favorite.created_at, limit, audit.actor_id, audit.actor_type, audit.action.value,
            audit.subject_user_id, audit.request_id, audit.outcome, require_product, token_id)
        assert row is not None, "favorites_add returns one row"
        outcome = AddOutcome(row[0])
        if outcome is AddOutcome.EXISTS:
            return outcome, Favorite(favorite.user_id, favorite.product_id, row[1])
        return outcome, favorite

    async def remove(self, user_id: UUID, product_id: UUID, audit: AuditEntry,
                     at: datetime) -> bool:
        row = await self._db.fetchrow_alone(
            REMOVE, user_id, product_id, at, audit.actor_id, audit.actor_type,
            audit.action.value, audit.subject_user_id, audit.request_id, audit.outcome)
        return row is not None

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
        return first_page_from_database(
            user_id, await self._db.fetchval(FIRST_PAGE_JSON, user_id, limit))

    async def count_for_user(self, user_id: UUID) -> int:
        return int(await self._db.fetchval(COUNT_FOR_USER, user_id))

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        rows = await self._db.fetch(CONTAINS, user_id, list(product_ids))
        return {row[0] for row in rows}

    async def count_for_product(self, product_id: UUID) -> int:
        return int(await self._db.fetchval(COUNT_FOR_PRODUCT, product_id))


class DriverAuditRepository(SqlAuditRepository):
    def __init__(self, conn: Executes, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def record(self, entry: AuditEntry, at: datetime) -> None:
        await self._db.execute(RECORD_AUDIT, at, entry.actor_id, entry.actor_type,
                               entry.action.value, entry.subject_user_id, entry.product_id,
                               entry.request_id, entry.outcome)


class DriverProductsRepository(SqlProductsRepository):
    def __init__(self, conn: Executes, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def existing(self, product_ids: Sequence[UUID], *,
                       for_share: bool = False) -> set[UUID]:
        rows = await self._db.fetch(EXISTING_PRODUCTS_FOR_SHARE if for_share
                                    else EXISTING_PRODUCTS, list(product_ids))
        return {row[0] for row in rows}

    async def deleted_since(self, product_ids: Sequence[UUID], since: datetime) -> set[UUID]:
        return {row[0] for row in await self._db.fetch(DELETED_SINCE, list(product_ids), since)}


class DriverRevokedTokenRepository(SqlRevokedTokenRepository):
    def __init__(self, conn: Executes, driver: DriverConnection):
        super().__init__(conn, "postgresql")
        self._db = driver

    async def active_since(self, since: datetime, now: datetime
                           ) -> list[tuple[str, datetime, datetime]]:
        rows = await self._db.fetch(ACTIVE_REVOCATIONS, since, now)
        return [(row[0], row[1], row[2]) for row in rows]
