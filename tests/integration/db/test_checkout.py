"""PostgreSQL: connections taken from the pool without a greenlet in the steady state, and
through it whenever the pool has to open one; no connection is leaked either way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from favorites.adapters.db.checkout import check_out
from favorites.adapters.db.engine import async_url
from favorites.adapters.db.uow import SqlUnitOfWorkFactory

pytestmark = pytest.mark.postgres


@pytest.fixture
def name() -> str:
    return f"checkout-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def engine(postgres_url: str, name: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        async_url(postgres_url), pool_size=1, max_overflow=0, pool_recycle=1,
        connect_args={"server_settings": {"application_name": name}})
    yield engine
    await engine.dispose()


@pytest.fixture
def greenlet_starts(engine: AsyncEngine,
                    monkeypatch: pytest.MonkeyPatch) -> list[AsyncConnection]:
    """Every ``AsyncConnection.start()`` on the test's engine: the check-out that runs in a
    greenlet (other tests' background tasks may connect to their own engines meanwhile)."""
    started: list[AsyncConnection] = []
    start = AsyncConnection.start

    async def counting_start(self: AsyncConnection, is_ctxmanager: bool = False) -> AsyncConnection:
        if self.engine is engine:
            started.append(self)
        return await start(self, is_ctxmanager)

    monkeypatch.setattr(AsyncConnection, "start", counting_start)
    return started


async def _pid(engine: AsyncEngine) -> int:
    conn = await check_out(engine)
    try:
        return int((await conn.sqlalchemy().execute(
            sa.text("SELECT pg_backend_pid()"))).scalar_one())
    finally:
        await conn.sqlalchemy().rollback()
        await conn.release()


async def _backends(postgres_url: str, name: str, expected: int) -> int:
    """Server-side connections of ``name`` (waits a little for a terminated one to go)."""
    watcher = create_async_engine(async_url(postgres_url), pool_size=1, max_overflow=0)
    try:
        for _ in range(40):
            async with watcher.connect() as conn:
                count = int((await conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": name})).scalar_one())
            if count == expected:
                break
            await asyncio.sleep(0.05)
        return count
    finally:
        await watcher.dispose()


async def test_an_idle_connection_is_taken_without_a_greenlet(
        engine: AsyncEngine, greenlet_starts: list[AsyncConnection]) -> None:
    first = await _pid(engine)  # the pool is empty: opened through the greenlet
    assert len(greenlet_starts) == 1
    for _ in range(3):
        assert await _pid(engine) == first
    assert len(greenlet_starts) == 1
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_an_invalidated_connection_is_replaced_through_the_greenlet(
        engine: AsyncEngine, greenlet_starts: list[AsyncConnection], postgres_url: str,
        name: str) -> None:
    conn = await check_out(engine)
    old = int((await conn.sqlalchemy().execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
    await conn.invalidate()  # e.g. after a disconnect: the pool must open a new one
    await conn.release()
    new = await _pid(engine)
    assert new != old
    assert len(greenlet_starts) == 2
    assert await _backends(postgres_url, name, 1) == 1


async def test_a_recycled_connection_is_closed_and_replaced(
        engine: AsyncEngine, greenlet_starts: list[AsyncConnection], postgres_url: str,
        name: str) -> None:
    old = await _pid(engine)
    await asyncio.sleep(1.1)  # older than pool_recycle
    new = await _pid(engine)
    assert new != old
    assert len(greenlet_starts) == 2  # the first opening and the replacement
    assert await _backends(postgres_url, name, 1) == 1  # the old one did not linger


async def test_units_of_work_pinned_to_the_primary_take_an_idle_connection_too(
        engine: AsyncEngine, greenlet_starts: list[AsyncConnection]) -> None:
    """Reads that must not lag (product existence while adding, revocations) go through
    ``on_primary()``: the same check-out as every other unit of work."""
    pinned = SqlUnitOfWorkFactory(engine).on_primary()
    for _ in range(3):
        async with pinned(readonly=True) as work:
            assert await work.products.existing([uuid.uuid4()]) == set()
    assert len(greenlet_starts) == 1  # the first opening only
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_sqlalchemy_connections_are_built_only_for_statements_that_need_them(
        engine: AsyncEngine, greenlet_starts: list[AsyncConnection],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements on the driver need no ``Connection`` around the pooled one; one through
    SQLAlchemy builds it over the same pooled connection, and both give it back."""
    built: list[Connection] = []
    init = Connection.__init__

    def counting_init(self: Connection, sync_engine: Any, *args: Any, **kwargs: Any) -> None:
        if sync_engine is engine.sync_engine:
            built.append(self)
        init(self, sync_engine, *args, **kwargs)

    monkeypatch.setattr(Connection, "__init__", counting_init)
    uow = SqlUnitOfWorkFactory(engine)
    user = uuid.uuid4()
    async with uow(readonly=True, user_id=user) as work:  # opens the pool's only connection
        first = int(await work.favorites._db.fetchval("SELECT pg_backend_pid()"))
    assert len(greenlet_starts) == 1  # the opening, through SQLAlchemy
    opening = len(built)  # its own, and the dialect's first-connect one
    assert opening >= 1
    for _ in range(3):
        async with uow(readonly=True, user_id=user) as work:
            assert await work.favorites.first_page(user, 10) is not None
            assert await work.favorites._db.fetchval("SELECT pg_backend_pid()") == first
    assert len(built) == opening  # taken and given back without one
    async with uow(user_id=user) as work:
        assert await work.refresh_tokens.delete_for_user(user) == 0  # through SQLAlchemy
        assert await work.favorites._db.fetchval("SELECT pg_backend_pid()") == first
        await work.commit()
    assert len(built) == opening + 1
    assert len(greenlet_starts) == 1
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
