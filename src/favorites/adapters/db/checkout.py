"""Taking a PostgreSQL connection from SQLAlchemy's pool and giving it back, without a greenlet
when no I/O is needed.

``AsyncEngine.connect()`` and ``AsyncConnection.close()`` each run the pool's code in a greenlet,
in case it has to talk to the server. Each greenlet maps and faults in a fresh frame stack; on
the virtualised bench machine the two per unit of work were over a tenth of the CPU of mixed
traffic in process. In the steady state neither needs the server: check-out takes an idle
connection from the pool's queue, check-in puts it back with nothing to roll back. So both run
directly when that is so, and through the greenlet otherwise: an empty pool, a connection to be
replaced (recycled or invalidated), a pre-ping, a transaction still open, SQLite.
"""

from __future__ import annotations

import warnings

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_UNKNOWN = object()


async def check_out(engine: AsyncEngine) -> AsyncConnection:
    """A connection from ``engine``'s pool, as ``await engine.connect()`` would give it.

    Directly only on PostgreSQL without pre-ping, with an idle connection waiting. If that
    connection turns out to need replacing (its age passed ``pool_recycle``, or the pool was
    invalidated after a disconnect), the pool terminates it (no I/O for the driver outside a
    greenlet), opening its successor fails here with ``MissingGreenlet`` before anything is
    sent, the pool takes the emptied slot back, and the greenlet path opens the new connection.
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
                return AsyncConnection(engine, sync_engine.connect())
            except sa_exc.MissingGreenlet:
                pass
    return await engine.connect()


async def check_in(conn: AsyncConnection) -> None:
    """Give the connection back to the pool, as ``await conn.close()`` would.

    Directly only for a PostgreSQL connection with no transaction open, neither SQLAlchemy's nor
    its driver adapter's: its check-in is bookkeeping. Anything else (SQLite, a transaction still
    open, an invalidated connection, an adapter whose transaction cannot be seen) takes the
    greenlet, where the pool's reset may talk to the server.
    """
    sync = conn.sync_connection
    if (sync is not None and conn.dialect.name == "postgresql" and not sync.invalidated
            and not sync.closed and not sync.in_transaction()
            and getattr(sync.connection.dbapi_connection, "_transaction", _UNKNOWN) is None):
        sync.close()
    else:
        await conn.close()
