"""PostgreSQL: a unit of work whose COMMIT is refused ends cleanly with the database's error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.uow import SqlUnitOfWorkFactory

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
