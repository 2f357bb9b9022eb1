"""Engines for the embedded default (SQLite) and production (PostgreSQL via asyncpg)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@dataclass(frozen=True, slots=True)
class PoolSettings:
    minimum: int = 10
    maximum: int = 50
    statement_timeout_ms: int = 5000


def async_url(url: str) -> str:
    """Map the documented ``sqlite:///`` / ``postgresql://`` forms to the async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database: {backend}")


T = TypeVar("T")

#: How a thread aiosqlite starts for a connection is named (``Thread-N (target)``, documented for
#: ``threading.Thread`` since Python 3.10).
_AIOSQLITE_THREAD = "(_connection_worker_thread)"


def run(main: Coroutine[Any, Any, T], *, settle_seconds: float = 2.0) -> T:
    """``asyncio.run`` for the migrations, which ``serve``, ``migrate``, ``token`` and ``products
    import`` run first on SQLite, and so meet a database file that cannot be opened first.

    aiosqlite cleans up a connection that failed to open from the connection's own thread, and
    reports back with a call onto the event loop. ``asyncio.run`` can close the loop before that
    call; the thread then dies on the closed loop with a traceback on stderr, under the command's
    one-line error (seen on a loaded machine, as a flaky test). So when the work fails, the
    aiosqlite threads still running are waited for (up to ``settle_seconds`` each) while the
    loop is still open. When it succeeds, every connection was closed and awaited already.
    """

    async def settled() -> T:
        try:
            return await main
        except BaseException:
            for thread in threading.enumerate():
                if thread.name.endswith(_AIOSQLITE_THREAD) and thread.is_alive():
                    await asyncio.to_thread(thread.join, settle_seconds)
            raise

    return asyncio.run(settled())


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str,
    pool: PoolSettings,
    *,
    application_name: str = "favorites",
    pre_ping: bool = False,
    connect_timeout: float = 5,
) -> AsyncEngine:
    """``pre_ping`` and a short ``connect_timeout`` are for replicas: a dead one must fail at
    checkout (where the unit of work falls back to the primary), not in the middle of a read."""
    target = async_url(url)
    if is_sqlite(url):
        database = make_url(target).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            target, pool_size=pool.minimum, max_overflow=max(0, pool.maximum - pool.minimum),
            connect_args={"timeout": pool.statement_timeout_ms / 1000},
        )
        _sqlite_pragmas(engine, pool.statement_timeout_ms)
        return engine
    connect_args: dict[str, Any] = {
        "server_settings": {
            "statement_timeout": str(pool.statement_timeout_ms),
            "application_name": application_name,
            # The per-user cap and ``favorites_add()`` count after taking the user's lock, which
            # only sees adds committed meanwhile under READ COMMITTED: a database or role that
            # defaults to REPEATABLE READ must not change that.
            "default_transaction_isolation": "read committed",
        },
        "timeout": connect_timeout,
        "command_timeout": pool.statement_timeout_ms / 1000 + 1,
    }
    # A fixed pool of up to ``maximum`` connections that are kept once opened: SQLAlchemy's
    # overflow connections are closed on return, which under load means a new connection (and
    # a PostgreSQL backend) per burst. ``minimum`` are opened up front by the factory's warm().
    return create_async_engine(
        target,
        pool_size=pool.maximum,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        pool_timeout=5,
        connect_args=connect_args,
    )


def _sqlite_pragmas(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    """WAL lets readers run beside the writer; BEGIN IMMEDIATE for writers avoids the deadlock
    SQLite reports (instead of waiting) when two deferred transactions both upgrade to write."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
