"""PostgreSQL: a unit of work whose COMMIT is refused ends cleanly with the database's error."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from favorites.adapters.cache.null import NullFavoritesCache
from favorites.adapters.catalog.local import LocalCatalog
from favorites.adapters.db import driver, migrate
from favorites.adapters.db.checkout import Checkout
from favorites.adapters.db.driver import observe_statements
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.repository import advisory_key
from favorites.adapters.db.tables import audit_log
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.cursor import CursorCodec
from favorites.domain.errors import ProductNotFound
from favorites.domain.models import (
    AddOutcome,
    AuditAction,
    AuditEntry,
    Favorite,
    Principal,
    PrincipalKind,
)
from favorites.service_layer.clock import SystemClock
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import ProductsService
from tests.conftest import drop_postgres, fresh_postgres_url

pytestmark = pytest.mark.postgres


class _AllOn:
    """Every flag on: bulk changes are behind ``enable_favorites_v2``."""

    def enabled(self, flag: str, user_id: uuid.UUID) -> bool:
        return True

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


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
    conn = Checkout.of(engine, await engine.connect())
    await conn.sqlalchemy().execute(sa.text("CREATE TEMP TABLE left_open (id int)"))
    assert conn.in_transaction()
    await conn.release()
    assert greenlet_closes == [conn.sqlalchemy()]  # the pool rolled it back, with I/O
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with engine.connect() as again:  # the temp table's creation was rolled back
        assert (await again.execute(sa.text("SELECT to_regclass('left_open')"))).scalar() is None


@pytest.fixture
def sent(engine: AsyncEngine) -> list[str]:
    """Every statement sent on the driver connections of the test's engine, in order."""
    statements: list[str] = []

    @contextlib.contextmanager
    def record(statement: str) -> Iterator[None]:
        statements.append(statement)
        yield

    observe_statements(engine.sync_engine, record)
    return statements


def _entry(user: uuid.UUID, product: uuid.UUID) -> AuditEntry:
    return AuditEntry(AuditAction.FAVORITE_ADDED, str(user), "user", str(user), product, "req")


async def test_a_unit_of_work_of_one_self_contained_statement_sends_only_it(
    engine: AsyncEngine, sent: list[str],
) -> None:
    """Adding or removing one favorite is one round trip: no BEGIN, no COMMIT. A unit of work
    of ordinary statements still begins its transaction before the first and commits it."""
    uow = SqlUnitOfWorkFactory(engine)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(user_id=user) as work:
        outcome, _ = await work.favorites.add(Favorite(user, product, T0), 10,
                                              _entry(user, product))
        await work.commit()
    assert (outcome, sent) == (AddOutcome.CREATED, [driver.ADD])
    sent.clear()
    async with uow(user_id=user) as work:
        removed = await work.favorites.remove(user, product, _entry(user, product), T0)
        await work.commit()
    assert (removed, sent) == (True, [driver.REMOVE])
    sent.clear()
    async with uow(user_id=user) as work:
        await work.favorites.lock_user(user)
        assert await work.favorites.insert(Favorite(user, product, T0))
        await work.commit()
    assert sent == ["BEGIN", driver.LOCK_USER, driver.INSERT, "COMMIT"]
    sent.clear()
    async with uow(user_id=user) as work:  # nothing sent, nothing to commit
        await work.commit()
    assert sent == []


async def test_adding_a_product_of_the_local_catalog_is_one_statement(
    engine: AsyncEngine, sent: list[str],
) -> None:
    """The product check is part of the add's own statement: no unit of work of its own to look
    the product up first, whether it exists or not."""
    uow = SqlUnitOfWorkFactory(engine)
    catalog = LocalCatalog(uow.on_primary())
    service = FavoritesService(uow, catalog, NullFavoritesCache(), CursorCodec(b"k" * 32),
                               SystemClock(), max_per_user=10)
    owner, product = uuid.uuid4(), uuid.uuid4()
    async with uow() as work:
        await work.products.upsert(product)
        await work.commit()
    principal = Principal(PrincipalKind.USER, str(owner), owner)
    sent.clear()
    _, created = await service.add(principal, owner, product)
    assert (created, sent) == (True, [driver.ADD])
    sent.clear()
    with pytest.raises(ProductNotFound):
        await service.add(principal, owner, uuid.uuid4())
    assert sent == [driver.ADD]


@pytest.mark.parametrize("kind", ["single", "bulk"])
async def test_a_product_deleted_while_an_add_waits_leaves_no_favorite_of_it(
    postgres_url: str, kind: str,
) -> None:
    """An add checks the product, then waits for the user's lock (another add of theirs holds
    it). Meanwhile the product is deleted and its favorites purged. The add must not then insert
    a favorite of the deleted product that nothing will ever purge: the deletion waits for it."""
    engine = create_engine(postgres_url, PoolSettings(2, 4, 5000))
    uow = SqlUnitOfWorkFactory(engine)
    catalog = LocalCatalog(uow.on_primary())
    clock = SystemClock()
    favorites = FavoritesService(uow, catalog, NullFavoritesCache(), CursorCodec(b"k" * 32),
                                 clock, max_per_user=10, flags=_AllOn())
    products = ProductsService(uow, catalog, NullFavoritesCache(), clock)
    owner, product = uuid.uuid4(), uuid.uuid4()
    await products.register_many([product])
    principal = Principal(PrincipalKind.USER, str(owner), owner)
    catalog_client = Principal(PrincipalKind.SERVICE, "catalog",
                               scopes=frozenset({"products:write"}))
    holder = await asyncpg.connect(postgres_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute(driver.LOCK_USER, advisory_key(owner))
        if kind == "single":
            add = asyncio.ensure_future(favorites.add(principal, owner, product))
        else:
            add = asyncio.ensure_future(favorites.bulk(principal, owner, [product], []))
        await asyncio.sleep(0.3)  # the add has checked the product and waits for the lock

        async def delete_and_purge() -> int:
            await products.delete(catalog_client, product)
            return await products.purge_favorites(product)

        deletion = asyncio.ensure_future(delete_and_purge())
        await asyncio.sleep(0.3)
        await held.commit()
        await asyncio.wait_for(asyncio.gather(add, deletion), 5)
        left = await holder.fetchval("SELECT count(*) FROM favorites WHERE product_id = $1",
                                     product)
    finally:
        await holder.close()
        await engine.dispose()
    assert (deletion.result(), left) == (1, 0)


async def test_a_statement_through_sqlalchemy_first_begins_the_units_transaction(
    engine: AsyncEngine, sent: list[str],
) -> None:
    """SQLAlchemy's statement nests in the driver's transaction begun just before it, so a
    driver statement after it and the SQLAlchemy one roll back together."""
    uow = SqlUnitOfWorkFactory(engine)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(user_id=user) as work:
        assert await work.favorites.insert_many(user, [product], T0) == {product}
        assert sent == ["BEGIN"]
        await work.audit.record(_entry(user, product), T0)
        # not committed
    async with uow(readonly=True) as work:
        assert await work.favorites.count_for_user(user) == 0
    assert sent[:3] == ["BEGIN", driver.RECORD_AUDIT, "ROLLBACK"]


async def test_a_self_contained_statement_after_others_joins_their_transaction(
    engine: AsyncEngine, sent: list[str],
) -> None:
    uow = SqlUnitOfWorkFactory(engine)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(user_id=user) as work:
        assert await work.favorites.count_for_user(user) == 0
        outcome, _ = await work.favorites.add(Favorite(user, product, T0), 10,
                                              _entry(user, product))
        assert outcome is AddOutcome.CREATED
        # not committed: rolled back with the transaction it joined
    assert sent[:4] == ["BEGIN", driver.COUNT_FOR_USER, driver.ADD, "ROLLBACK"]
    async with uow(readonly=True) as work:
        assert await work.favorites.count_for_user(user) == 0


async def test_nothing_may_follow_a_statement_that_committed_by_itself(
    engine: AsyncEngine,
) -> None:
    """It cannot be undone, so a statement after it (that a failure would roll back alone) is a
    programming error, raised before anything is sent; so is a statement after the unit of
    work's commit."""
    uow = SqlUnitOfWorkFactory(engine)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(user_id=user) as work:
        await work.favorites.add(Favorite(user, product, T0), 10, _entry(user, product))
        with pytest.raises(RuntimeError, match="only one"):
            await work.favorites.lock_user(user)
    async with uow(user_id=user) as work:
        await work.favorites.remove(user, product, _entry(user, product), T0)
        with pytest.raises(RuntimeError, match="only one"):
            await work.favorites.add(Favorite(user, product, T0), 10, _entry(user, product))
    async with uow(user_id=user) as work:  # nothing to commit: later, nothing would be
        await work.commit()
        with pytest.raises(RuntimeError, match="has committed"):
            await work.favorites.lock_user(user)
    async with uow(user_id=user) as work:  # committed: later, outside the transaction
        await work.favorites.lock_user(user)
        await work.commit()
        with pytest.raises(RuntimeError, match="has committed"):
            await work.favorites.insert(Favorite(user, product, T0))
    async with uow(readonly=True) as work:  # the add had committed; the remove too
        assert await work.favorites.count_for_user(user) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture(params=["database default", "repeatable read by default"])
def cap_database(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """The session's database, and one whose default isolation is REPEATABLE READ (set by a
    DBA, or on the role): the count must still see adds committed while waiting for the lock."""
    if request.param == "database default":
        yield postgres_url
        return
    name, url = fresh_postgres_url("favorites_isolation")
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation"
                         " = 'repeatable read'")
        yield url
    finally:
        drop_postgres(name)


async def test_concurrent_adds_never_exceed_the_cap(cap_database: str) -> None:
    """The cap is exact under concurrency: each add counts after taking the user's lock, in
    the same round trip as its insert, whatever isolation the database defaults to."""
    engine = create_engine(cap_database, PoolSettings(1, 12, 5000))
    try:
        uow = SqlUnitOfWorkFactory(engine)
        user, cap = uuid.uuid4(), 5
        products = [uuid.uuid4() for _ in range(12)]

        async def add(product: uuid.UUID) -> AddOutcome:
            async with uow(user_id=user) as work:
                outcome, _ = await work.favorites.add(Favorite(user, product, T0), cap,
                                                      _entry(user, product))
                await work.commit()
            return outcome

        outcomes = await asyncio.gather(*(add(p) for p in products))
        assert sorted(outcomes) == sorted([AddOutcome.CREATED] * cap
                                          + [AddOutcome.FULL] * (len(products) - cap))
        async with uow(readonly=True) as work:
            assert await work.favorites.count_for_user(user) == cap
            audited = (await work.audit._conn.execute(
                sa.select(sa.func.count()).select_from(audit_log)
                .where(audit_log.c.subject_user_id == str(user)))).scalar_one()
        assert audited == cap
    finally:
        await engine.dispose()


async def _row_count(postgres_url: str, user: uuid.UUID) -> int:
    """Favorites of ``user`` as another session sees them: committed rows only."""
    other = await asyncpg.connect(postgres_url)
    try:
        return int(await other.fetchval("SELECT count(*) FROM favorites WHERE user_id = $1",
                                        user))
    finally:
        await other.close()


async def test_a_transaction_left_open_is_never_handed_to_the_next_unit_of_work(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancellation that lands after the server ran BEGIN (a deadline, a shutdown) leaves
    the pooled connection inside a transaction the unit of work never saw begin. Handed on,
    asyncpg would nest the next unit's transaction in it as a savepoint, and that unit's
    COMMIT would commit nothing. The connection is dropped instead, and the next write
    is really committed."""
    uow = SqlUnitOfWorkFactory(engine)
    user, product = uuid.uuid4(), uuid.uuid4()
    async with uow(readonly=True) as work:  # the pool's only connection, opened
        first = await work.favorites._db.fetchval("SELECT pg_backend_pid()")
    execute = asyncpg.Connection.execute

    async def cancelled_after_begin(self: asyncpg.Connection, query: str, *args: Any,
                                    **kwargs: Any) -> Any:
        result = await execute(self, query, *args, **kwargs)
        if query.startswith("BEGIN"):
            raise asyncio.CancelledError  # the server has begun; the caller never hears
        return result

    monkeypatch.setattr(asyncpg.Connection, "execute", cancelled_after_begin)
    with pytest.raises(asyncio.CancelledError):
        async with uow(user_id=user) as work:
            await work.favorites.lock_user(user)
    monkeypatch.undo()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    async with uow(user_id=user) as work:  # the pool's only slot: a new connection
        await work.favorites.lock_user(user)
        assert await work.favorites._db.fetchval("SELECT pg_backend_pid()") != first
        assert await work.favorites.insert(Favorite(user, product, T0))
        await work.commit()
    assert await _row_count(postgres_url, user) == 1


@pytest.mark.parametrize("through", ["driver", "sqlalchemy"])
async def test_a_unit_of_work_cancelled_mid_statement_raises_the_cancellation(
    engine: AsyncEngine, through: str,
) -> None:
    """A cancellation that lands while a statement runs (a shutdown stopping a background
    task) closes asyncpg's connection, so the unit of work's rollback then fails. That
    failure must not replace the cancellation: a loop that catches its own errors (resuming
    purges) took it for a database outage and slept 30 s through the shutdown. The caller
    sees ``CancelledError`` and the broken connection never goes back to the pool."""
    uow = SqlUnitOfWorkFactory(engine)
    running = asyncio.Event()

    async def slow_statement() -> None:
        async with uow() as work:
            running.set()
            if through == "driver":
                await work.favorites._db.fetchval("SELECT pg_sleep(5)")
            else:
                await work.products._conn.execute(sa.text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(slow_statement())
    await running.wait()
    await asyncio.sleep(0.2)  # the statement is on the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=3)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with uow(readonly=True) as work:  # the pool's only slot works again
        assert await work.favorites._db.fetchval("SELECT 1") == 1
