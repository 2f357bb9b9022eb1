"""PostgreSQL: a unit of work whose COMMIT is refused ends cleanly with the database's error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from favorites.adapters.db.checkout import check_in
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.models import Favorite

pytestmark = pytest.mark.postgres


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, PoolSettings(1, 1, 5000))
    yield engine
    await engine.dispose()


async def test_a_refused_commit_raises_its_own_error_and_the_connection_stays_usable(
    engine: AsyncEngine,
) -> None:
    """A deferred constraint fails at COMMIT: the caller gets that error (not an error
    about rolling back a transaction the server already ended), and the pool's only connection
    serves the next unit of work."""
    uow = SqlUnitOfWorkFactory(engine)

    async def commit_a_duplicate() -> None:
        async with uow() as work:
            conn = work.audit._conn
            await conn.execute(sa.text(
                "CREATE TEMP TABLE deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
            await conn.execute(sa.text("INSERT INTO deferred_check VALUES (1), (1)"))
            await work.commit()

    with pytest.raises(sa.exc.DBAPIError, match="COMMIT") as refused:
        await commit_a_duplicate()
    assert getattr(refused.value.orig, "sqlstate", None) == "23505"
    async with uow(readonly=True) as work:
        assert await work.favorites.count_for_product(uuid.uuid4()) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture
def greenlet_closes(engine: AsyncEngine,
                    monkeypatch: pytest.MonkeyPatch) -> list[AsyncConnection]:
    """Every ``AsyncConnection.close()`` on the test's engine: the check-in that runs in a
    greenlet (other tests' background tasks may use their own engines meanwhile)."""
    closed: list[AsyncConnection] = []
    close = AsyncConnection.close

    async def counting_close(self: AsyncConnection) -> None:
        if self.engine is engine:
            closed.append(self)
        await close(self)

    monkeypatch.setattr(AsyncConnection, "close", counting_close)
    return closed


async def _backend_pid(uow: SqlUnitOfWorkFactory) -> int:
    async with uow(readonly=True) as work:
        return int(await work.favorites._db.fetchval("SELECT pg_backend_pid()"))


async def test_units_of_work_give_their_connection_back_without_a_greenlet(
    engine: AsyncEngine, greenlet_closes: list[AsyncConnection],
) -> None:
    """Reads, driver writes and SQLAlchemy statements committed in a writing unit of work all
    leave nothing open, so the pool takes the connection back directly; the pool's only
    connection then serves every unit of work in turn."""
    uow = SqlUnitOfWorkFactory(engine)
    first = await _backend_pid(uow)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(user_id=user) as work:  # driver statements in the driver's transaction
        await work.favorites.lock_user(user)
        assert await work.favorites.insert(Favorite(user, product, datetime.now(UTC)))
        await work.commit()
    async with uow(user_id=user) as work:  # a SQLAlchemy statement nested in it
        assert await work.refresh_tokens.delete_for_user(user) == 0
        assert await work.favorites.delete(user, product)
        await work.commit()
    async with uow(user_id=user) as work:  # not committed: rolled back, then given back
        assert await work.refresh_tokens.delete_for_user(user) == 0
    assert await _backend_pid(uow) == first
    assert greenlet_closes == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_connection_with_a_transaction_open_is_given_back_through_the_greenlet(
    engine: AsyncEngine, greenlet_closes: list[AsyncConnection],
) -> None:
    conn = await engine.connect()
    await conn.execute(sa.text("CREATE TEMP TABLE left_open (id int)"))
    assert conn.in_transaction()
    await check_in(conn)
    assert greenlet_closes == [conn]  # the pool rolled it back on check-in, with I/O
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with engine.connect() as again:  # the temp table's creation was rolled back
        assert (await again.execute(sa.text("SELECT to_regclass('left_open')"))).scalar() is None
