"""Taking a PostgreSQL connection from SQLAlchemy's pool and giving it back, without a greenlet
when no I/O is needed, and without SQLAlchemy's connection objects unless a statement needs them.

``AsyncEngine.connect()`` and ``AsyncConnection.close()`` each run the pool's code in a greenlet,
in case it has to talk to the server. Each greenlet maps and faults in a fresh frame stack; on
the virtualised bench machine the two per unit of work were over a tenth of the CPU of mixed
traffic in process. In the steady state neither needs the server: check-out takes an idle
connection from the pool's queue, check-in puts it back with nothing to roll back. So both run
directly when that is so, and through the greenlet otherwise: an empty pool, a connection to be
replaced (recycled or invalidated), a pre-ping, a transaction still open, SQLite.

Most units of work on PostgreSQL send all their statements on the driver connection
(``adapters.db.driver``), so the ``Connection`` and ``AsyncConnection`` SQLAlchemy wraps around a
pooled connection (with their event dispatch and finalizers: about a third of an empty unit of
work's cost) are built only when a statement goes through SQLAlchemy (:meth:`Checkout.sqlalchemy`).
The pool itself, its limits, its check-out and check-in events (the pool gauges) and its reset
are SQLAlchemy's as before.
"""

from __future__ import annotations

import warnings
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

_UNKNOWN = object()


class Checkout:
    """One connection checked out of ``engine``'s pool, until :meth:`release`."""

    __slots__ = ("_conn", "engine", "pooled")

    def __init__(self, engine: AsyncEngine, pooled: PoolProxiedConnection,
                 conn: AsyncConnection | None = None):
        self.engine = engine
        self.pooled = pooled
        self._conn = conn

    @classmethod
    def of(cls, engine: AsyncEngine, conn: AsyncConnection) -> Checkout:
        """A connection SQLAlchemy already wrapped (opened through the greenlet, or a replica's
        pre-pinged one)."""
        sync = conn.sync_connection
        assert sync is not None, "a started connection"
        return cls(engine, sync.connection, conn)

    @property
    def dialect_name(self) -> str:
        return str(self.engine.dialect.name)

    @property
    def driver_connection(self) -> Any:
        """The driver's own connection (asyncpg's on PostgreSQL)."""
        return self.pooled.driver_connection

    def sqlalchemy(self) -> AsyncConnection:
        """SQLAlchemy's connection over the pooled one, built on first use; closing it (in
        :meth:`release`) gives the pooled connection back."""
        conn = self._conn
        if conn is None:
            conn = self._conn = AsyncConnection(
                self.engine, Connection(self.engine.sync_engine, self.pooled))
        return conn

    def in_transaction(self) -> bool:
        """Whether SQLAlchemy began a transaction (SQLite's, or a savepoint on PostgreSQL)."""
        return self._conn is not None and self._conn.in_transaction()

    async def invalidate(self) -> None:
        """Close the server connection for good: it will never be handed to another request."""
        await self.sqlalchemy().invalidate()

    async def release(self) -> None:
        """Give the connection back to the pool, as ``await conn.close()`` would.

        Directly only for a valid PostgreSQL connection with no transaction open, neither
        SQLAlchemy's nor its driver adapter's: its check-in is bookkeeping. Anything else
        (SQLite, a transaction still open, an invalidated connection, an adapter whose
        transaction cannot be seen) takes the greenlet, where the pool's reset may talk to the
        server. A connection still inside a transaction that SQLAlchemy did not begin is
        invalidated: nothing else would end it.
        """
        conn = self._conn
        if self.engine.dialect.name == "postgresql" and self.pooled.is_valid and (
                getattr(self.pooled.dbapi_connection, "_transaction", _UNKNOWN) is None):
            if _left_in_transaction(self.pooled.driver_connection):
                # Not SQLAlchemy's transaction, so one the unit of work did not end: a BEGIN
                # or COMMIT cancelled midway, a statement after an empty commit. The pool's
                # reset cannot see it, and asyncpg would nest the next user's transaction in
                # it as a savepoint whose "commit" commits nothing: the connection is dropped.
                await self.invalidate()
            elif conn is None:
                self.pooled.close()
                return
            else:
                sync = conn.sync_connection
                if sync is not None and not sync.invalidated and not sync.closed \
                        and not sync.in_transaction():
                    sync.close()
                    return
        await self.sqlalchemy().close()


def _left_in_transaction(driver: Any) -> bool:
    """Whether asyncpg's connection is inside a transaction: by the server's last word on it,
    or by asyncpg's own record of an outermost transaction (kept after a failed BEGIN)."""
    return bool(driver.is_in_transaction()) or getattr(driver, "_top_xact", None) is not None


async def check_out(engine: AsyncEngine) -> Checkout:
    """A connection from ``engine``'s pool, as ``await engine.connect()`` would give it.

    Directly only on PostgreSQL without pre-ping, with an idle connection waiting. If that
    connection turns out to need replacing (its age passed ``pool_recycle``, or the pool was
    invalidated after a disconnect), the pool terminates it (no I/O for the driver outside a
    greenlet), opening its successor fails here with ``MissingGreenlet`` before anything is
    sent, the pool takes the emptied slot back, and the greenlet path opens the new connection
    (where a driver error becomes SQLAlchemy's, as the HTTP layer expects).
    """
    sync_engine = engine.sync_engine
    pool = sync_engine.pool
    if (sync_engine.dialect.name == "postgresql"
            and getattr(pool, "_pre_ping", True) is False
            and getattr(pool, "checkedin", lambda: 0)() > 0):
        with warnings.catch_warnings():
            # When the idle connection has to be replaced, the driver's connect coroutine that
            # the pool had begun to build is dropped unawaited; it is opened again below.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            try:
                return Checkout(engine, sync_engine.raw_connection())
            except sa_exc.MissingGreenlet:
                pass
    return Checkout.of(engine, await engine.connect())
