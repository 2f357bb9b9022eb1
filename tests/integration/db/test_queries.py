"""PostgreSQL: pool and statement timeout, and the keyset pagination plan (index scan, no sort)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db import migrate
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.repository import SqlFavoritesRepository
from favorites.adapters.db.tables import ACTED_ELSEWHERE, audit_log
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from tests.conftest import drop_postgres, fresh_postgres_url
from tests.integration.db.explain import EXPLAINERS, PER_USER, describe, nodes, populate

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def populated() -> Iterator[tuple[str, list[uuid.UUID]]]:
    """A fresh database with 20,000 favorites over 400 users, analysed."""
    name, url = fresh_postgres_url("favorites_explain")
    try:
        migrate.upgrade(url)
        yield url, populate(url)
    finally:
        drop_postgres(name)


@pytest.fixture(scope="module")
async def engine(populated: tuple[str, list[uuid.UUID]]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(populated[0], PoolSettings(1, 2, 5000))
    yield engine
    await engine.dispose()


Explain = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(params=sorted(EXPLAINERS))
def explain(request: pytest.FixtureRequest) -> Explain:
    """Each plan test for both repositories: SQLAlchemy Core's and the driver's."""
    return EXPLAINERS[request.param]


def assert_keyset_plan(plan: dict[str, Any], index_names: set[str]) -> None:
    """Limit over an index (only) scan of the keyset index, and no Sort anywhere."""
    kinds = describe(plan)
    scans = [n for n in nodes(plan) if n["Node Type"] in ("Index Scan", "Index Only Scan")]
    assert scans, kinds
    assert all(scan["Index Name"] in index_names for scan in scans), kinds
    assert not any("Sort" in kind for kind, _ in kinds), kinds  # neither Sort nor Incremental
    assert plan["Node Type"] == "Limit", kinds


async def first_page(engine: AsyncEngine, owner: uuid.UUID, limit: int) -> list[Any]:
    async with engine.connect() as conn:
        return await SqlFavoritesRepository(conn, "postgresql").page(owner, limit, None)


async def test_first_page_walks_the_keyset_index_without_sorting(
    engine: AsyncEngine, populated: tuple[str, list[uuid.UUID]], explain: Explain
) -> None:
    owner = populated[1][123]
    async with engine.connect() as conn:
        # PER_USER + 1 is what the service asks for a first page (MAX_PAGE + 1)
        plan = await explain(conn, lambda repo: repo.page(owner, PER_USER + 1, None))
    assert_keyset_plan(plan, {"ix_favorites_user_created"})
    print("first page plan:", describe(plan))


async def test_rendered_first_page_reads_the_keyset_index_without_sorting_the_table(
    engine: AsyncEngine, populated: tuple[str, list[uuid.UUID]], explain: Explain
) -> None:
    """The first page as the database renders it (what a cache miss runs): the same Limit over
    the keyset index inside, and only its 51 rows ordered again for the aggregate."""
    owner = populated[1][42]
    async with engine.connect() as conn:
        plan = await explain(conn, lambda repo: repo.first_page(owner, PER_USER + 1))
    assert plan["Node Type"] == "Aggregate", describe(plan)
    limit = next(n for n in nodes(plan) if n["Node Type"] == "Limit")
    assert_keyset_plan(limit, {"ix_favorites_user_created"})
    print("rendered first page plan:", describe(plan))


async def test_cursor_page_walks_the_keyset_index_without_sorting(
    engine: AsyncEngine, populated: tuple[str, list[uuid.UUID]], explain: Explain
) -> None:
    owner = populated[1][7]
    last = (await first_page(engine, owner, 10))[-1]
    async with engine.connect() as conn:
        plan = await explain(
            conn, lambda repo: repo.page(owner, 21, (last.created_at, last.product_id))
        )
    assert_keyset_plan(plan, {"ix_favorites_user_created"})
    scan = next(n for n in nodes(plan) if "Index" in n["Node Type"])
    assert "created_at <=" in scan["Index Cond"]  # the cursor bound is in the index condition
    print("cursor page plan:", describe(plan))


async def test_pages_select_only_the_two_columns_they_return(
    engine: AsyncEngine, populated: tuple[str, list[uuid.UUID]], explain: Explain
) -> None:
    owner = populated[1][0]
    async with engine.connect() as conn:
        plan = await explain(conn, lambda repo: repo.page(owner, 10, None), verbose=True)
    assert [column.rsplit(".", 1)[-1] for column in plan["Output"]] == ["product_id", "created_at"]


async def test_statement_timeout_and_pool_default_to_5_s_and_at_most_50_kept(postgres_url: str) -> None:
    engine = create_engine(postgres_url, PoolSettings())
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SHOW statement_timeout"))).scalar_one() == "5s"
            name = (await conn.execute(sa.text("SHOW application_name"))).scalar_one()
        assert name == "favorites"
        assert engine.pool.size() == 50  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_a_statement_over_the_timeout_is_cancelled(postgres_url: str) -> None:
    engine = create_engine(postgres_url, PoolSettings(1, 1, 200))
    try:
        async with engine.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError, match="statement timeout"):
                await conn.execute(sa.text("SELECT pg_sleep(2)"))
    finally:
        await engine.dispose()


async def test_warm_opens_the_pool_minimum_up_front(postgres_url: str) -> None:
    factory = SqlUnitOfWorkFactory(create_engine(postgres_url, PoolSettings(3, 5, 5000)),
                                   pool_minimum=3)
    try:
        assert factory.primary.pool.checkedin() == 0  # type: ignore[attr-defined]
        await factory.warm()
        assert factory.primary.pool.checkedin() == 3  # type: ignore[attr-defined]
        async with factory(readonly=True) as work:
            assert await work.favorites.count_for_user(uuid.uuid4()) == 0
        assert factory.primary.pool.checkedin() == 3  # type: ignore[attr-defined]
    finally:
        await factory.dispose()


async def test_an_erasure_finds_the_users_audit_rows_by_index(
    engine: AsyncEngine, populated: tuple[str, list[uuid.UUID]],
) -> None:
    """Both of the erasure's statements on the audit log walk an index: a scan of the whole log,
    under the user's lock, would pass the statement timeout at production size. The rows in
    which a user acted on someone else are few, and only they are in the second index."""
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO audit_log (occurred_at, actor_id, actor_type, action, subject_user_id,"
            " outcome) SELECT now(), u::text, 'user', 'favorite.added', u::text, 'success'"
            " FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, 20000)) AS users"))
        await conn.execute(sa.text(
            "INSERT INTO audit_log (occurred_at, actor_id, actor_type, action, subject_user_id,"
            " outcome) SELECT now(), 'admin-' || (n % 5), 'user', 'favorites.viewed_by_admin',"
            " gen_random_uuid()::text, 'success' FROM generate_series(1, 200) AS n"))
        await conn.execute(sa.text("ANALYZE audit_log"))
    someone = str(uuid.uuid4())
    statements = (
        sa.update(audit_log).where(audit_log.c.subject_user_id == someone)
        .values(subject_user_id="erased:x"),
        sa.update(audit_log).where(audit_log.c.actor_id == someone, ACTED_ELSEWHERE)
        .values(actor_id="erased:x"),
    )
    used = []
    async with engine.connect() as conn:
        for statement in statements:
            sql = str(statement.compile(dialect=conn.dialect,
                                        compile_kwargs={"literal_binds": True}))
            plan = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()
            scans = [n for n in nodes(plan[0]["Plan"]) if "Scan" in n["Node Type"]]
            assert all(n["Node Type"] != "Seq Scan" for n in scans), describe(plan[0]["Plan"])
            used.append({n.get("Index Name") for n in scans} - {None})
    assert used == [{"ix_audit_log_subject_user_id"}, {"ix_audit_log_actor_elsewhere"}]
