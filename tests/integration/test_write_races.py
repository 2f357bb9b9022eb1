"""Writes against what may happen around them: a cancelled or failed request after its commit, a
product registered again while its purge runs, an admin read while the user is erased."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.catalog.local import LocalCatalog
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.tables import audit_log
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.cursor import CursorCodec
from favorites.domain.models import Principal, PrincipalKind
from favorites.entrypoints.http.app import create_app
from favorites.service_layer.clock import SystemClock
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import ProductsService
from favorites.service_layer.users import UsersService
from tests.conftest import make_settings, started
from tests.helpers import bearer
from tests.unit.fakes import RecordingCache

CATALOG = Principal(PrincipalKind.SERVICE, "service:catalog",
                    scopes=frozenset({"products:write", "users:erase"}))


def user(owner: uuid.UUID, *roles: str) -> Principal:
    return Principal(PrincipalKind.USER, str(owner), owner, roles=frozenset(roles or ("user",)),
                     token_id=uuid.uuid4().hex)


class _NoRevocations:
    def revoke_locally(self, jti: str, expires_at: int) -> None:
        return None


@dataclass
class Services:
    engine: AsyncEngine
    uow: SqlUnitOfWorkFactory
    cache: RecordingCache
    favorites: FavoritesService
    products: ProductsService
    users: UsersService

    async def count(self, user_id: uuid.UUID) -> int:
        async with self.uow(readonly=True) as work:
            return await work.favorites.count_for_user(user_id)


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    async for built in _services(database_url):
        yield built


@pytest.fixture
async def pg_services(postgres_url: str) -> AsyncIterator[Services]:
    """PostgreSQL only: where SQLite serialises every writer already (BEGIN IMMEDIATE)."""
    async for built in _services(postgres_url):
        yield built


async def _services(database_url: str) -> AsyncIterator[Services]:
    engine = create_engine(database_url, PoolSettings(2, 6, 5000))
    uow = SqlUnitOfWorkFactory(engine)
    cache, clock = RecordingCache(), SystemClock()
    catalog = LocalCatalog(uow.on_primary())
    yield Services(
        engine, uow, cache,
        FavoritesService(uow, catalog, cache, CursorCodec(b"k" * 32), clock, max_per_user=100),
        ProductsService(uow, catalog, cache, clock),
        UsersService(uow, cache, clock, b"p" * 32, _NoRevocations(), token_leeway_seconds=0),
    )
    await engine.dispose()


def around_commit(service: FavoritesService, *, before: Callable[[], Any] | None = None,
                  after: Callable[[], Any] | None = None,
                  only: Callable[[dict[str, Any]], bool] = lambda kwargs: True) -> None:
    """Every writing unit of work of ``service`` (that ``only`` picks by its arguments) runs
    ``before()`` just before its commit and ``after()`` right after it went through (each
    awaited if it returns an awaitable): where a request can be paused, cancelled, or lose its
    connection with the write already done."""
    real = service._uow

    async def call(hook: Callable[[], Any] | None) -> None:
        outcome = hook() if hook is not None else None
        if asyncio.iscoroutine(outcome):
            await outcome

    def factory(**kwargs: Any) -> Any:
        work = real(**kwargs)
        if kwargs.get("readonly") or not only(kwargs):
            return work

        class Hooked:
            async def __aenter__(self) -> Any:
                inner = await work.__aenter__()
                commit = inner.commit

                async def hooked_commit() -> None:
                    await call(before)
                    await commit()
                    await call(after)

                inner.commit = hooked_commit
                return inner

            async def __aexit__(self, *exc: Any) -> None:
                await work.__aexit__(*exc)

        return Hooked()

    service._uow = factory  # type: ignore[assignment]


async def test_a_request_cancelled_after_its_commit_still_invalidates(
    services: Services,
) -> None:
    """A shutdown that gave up waiting cancels the request: the add is finished (its statement
    was committed) and the cache invalidated, and only then is the cancellation raised."""
    owner, product = uuid.uuid4(), uuid.uuid4()
    await services.products.register(CATALOG, product)
    caller: list[asyncio.Future[Any]] = []

    async def cancel_the_caller() -> None:
        caller[0].cancel()
        await asyncio.sleep(0.01)  # where the cancellation would land

    around_commit(services.favorites, after=cancel_the_caller)
    caller.append(asyncio.ensure_future(services.favorites.add(user(owner), owner, product)))
    with pytest.raises(asyncio.CancelledError):
        await caller[0]
    assert await services.count(owner) == 1
    assert services.cache.invalidated == [owner]


async def test_an_error_after_the_commit_still_invalidates_and_so_does_the_retry(
    services: Services,
) -> None:
    """The reply to the commit lost (the connection dropped): the add is in the database, the
    request fails, and the client retries; the retry finds the favorite there already. Both
    invalidate, or the user's cached page would miss the add for its whole TTL."""
    owner, product = uuid.uuid4(), uuid.uuid4()
    await services.products.register(CATALOG, product)
    lose = [True]

    def connection_lost() -> None:
        if lose[0]:
            lose[0] = False
            raise ConnectionResetError("the reply to COMMIT never came")

    around_commit(services.favorites, after=connection_lost)
    with pytest.raises(ConnectionResetError):
        await services.favorites.add(user(owner), owner, product)
    assert services.cache.invalidated == [owner]
    _, created = await services.favorites.add(user(owner), owner, product)
    assert not created
    assert services.cache.invalidated == [owner, owner]
    assert await services.favorites.remove(user(owner), owner, product)
    assert not await services.favorites.remove(user(owner), owner, product)  # a retried remove
    assert services.cache.invalidated == [owner] * 4


async def test_a_purge_stops_when_the_product_is_registered_again(services: Services) -> None:
    """DELETE answers 202 and purges in the background; the product registered again meanwhile
    is live, and a favorite added since must not be purged with the old ones."""
    early, late, product = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await services.products.register(CATALOG, product)
    await services.favorites.add(user(early), early, product)
    await services.products.delete(CATALOG, product)
    assert await services.products.register(CATALOG, product)  # "deleted before and now back"
    _, created = await services.favorites.add(user(late), late, product)
    assert created
    assert await services.products.purge_favorites(product) == 0  # the purge's next batch
    assert (await services.count(early), await services.count(late)) == (1, 1)
    # Without the registration, the purge does what it is for.
    await services.products.delete(CATALOG, product)
    assert await services.products.purge_favorites(product) == 2
    assert (await services.count(early), await services.count(late)) == (0, 0)


async def test_an_erasure_waits_for_an_admin_read_being_audited(pg_services: Services) -> None:
    """The admin read's audit row, not committed yet, would be invisible to the erasure's
    pseudonymisation and then committed with the user's id in it: the two take the same lock."""
    services = pg_services
    admin, victim, product = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await services.products.register(CATALOG, product)
    await services.favorites.add(user(victim), victim, product)
    recorded, go_on = asyncio.Event(), asyncio.Event()

    async def pause() -> None:
        recorded.set()
        await go_on.wait()

    # Only the admin read's audit has no user_id.
    around_commit(services.favorites, before=pause, only=lambda kwargs: "user_id" not in kwargs)
    read = asyncio.ensure_future(services.favorites.count(user(admin, "admin"), victim, "r1"))
    await asyncio.wait_for(recorded.wait(), 5)
    erasure = asyncio.ensure_future(services.users.erase(CATALOG, victim, "r2"))
    await asyncio.sleep(0.3)
    assert not erasure.done()  # waiting for the admin read's lock
    go_on.set()
    await asyncio.wait_for(read, 5)
    assert await asyncio.wait_for(erasure, 5) == 1
    async with services.engine.connect() as conn:
        naming = (await conn.execute(sa.select(audit_log.c.action).where(sa.or_(
            audit_log.c.subject_user_id == str(victim),
            audit_log.c.actor_id == str(victim))))).scalars().all()
    assert naming == []


async def test_purges_left_unfinished_are_resumed(services: Services) -> None:
    """A process that stopped while purging (a deploy, a crash), or a batch that failed: the
    product is marked deleted and some of its favorites are left. ``resume_purges`` finishes
    them, and leaves a product registered again alone."""
    fans, gone, back = [uuid.uuid4() for _ in range(3)], uuid.uuid4(), uuid.uuid4()
    for product in (gone, back):
        await services.products.register(CATALOG, product)
        for fan in fans:
            await services.favorites.add(user(fan), fan, product)
        await services.products.delete(CATALOG, product)  # marked; its purge never ran
    await services.products.register(CATALOG, back)
    services.cache.invalidated.clear()
    # At least these three: the session's database may hold others' unfinished purges too.
    assert await services.products.resume_purges() >= 3
    assert [await services.count(fan) for fan in fans] == [1, 1, 1]  # ``back``'s favorite each
    assert set(fans) <= set(services.cache.invalidated)
    assert await services.products.resume_purges() == 0


async def test_a_start_resumes_the_purges_a_previous_process_left(
    database_url: str, tmp_path: Path,
) -> None:
    fan, product = uuid.uuid4(), uuid.uuid4()
    async for client in started(create_app(make_settings(database_url, tmp_path))):
        container = client._transport.app.state.container  # type: ignore[attr-defined]
        await container.products.register(CATALOG, product)
        await container.favorites.add(user(fan), fan, product)
        await container.products.delete(CATALOG, product)  # and the process stops here
    async for client in started(create_app(make_settings(database_url, tmp_path))):
        for _ in range(100):
            count = await client.get("/v1/users/me/favorites/count", headers=bearer(fan))
            if count.json() == {"count": 0}:
                break
            await asyncio.sleep(0.05)
        assert count.json() == {"count": 0}


async def test_a_shutdown_waits_for_the_writes_of_cancelled_requests(
    database_url: str, tmp_path: Path,
) -> None:
    """uvicorn cancels what still runs when its graceful timeout ends, then runs the lifespan's
    shutdown: a write going on past its cancelled request is finished, invalidation included,
    before the pools and caches it needs are closed."""
    fan, product = uuid.uuid4(), uuid.uuid4()
    invalidated: list[uuid.UUID] = []
    async for client in started(create_app(make_settings(database_url, tmp_path))):
        container = client._transport.app.state.container  # type: ignore[attr-defined]
        await container.products.register(CATALOG, product)
        cache = container.favorites._cache
        async def recording(user_id: uuid.UUID, invalidate: Any = cache.invalidate_user) -> None:
            await invalidate(user_id)
            invalidated.append(user_id)

        cache.invalidate_user = recording
        around_commit(container.favorites, before=lambda: asyncio.sleep(1.0))
        request = asyncio.ensure_future(container.favorites.add(user(fan), fan, product))
        await asyncio.sleep(0.2)  # inside the write, before its commit
        request.cancel()  # and, as uvicorn does, on to the shutdown without waiting for it
    assert invalidated == [fan]  # done before the shutdown above returned
    with pytest.raises(asyncio.CancelledError):
        await request
    async for client in started(create_app(make_settings(database_url, tmp_path))):
        count = await client.get("/v1/users/me/favorites/count", headers=bearer(fan))
        assert count.json() == {"count": 1}
