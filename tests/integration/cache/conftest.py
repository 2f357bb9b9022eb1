"""Fixtures of the cache tests: PostgreSQL (tests/conftest.py), the shared Redis on 6379 (db 11,
a key prefix per test), a Redis Cluster started for the session, and services wired like
``bootstrap`` does, over a unit of work that can count and hold database loads."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.cache.memory import InProcessFavoritesCache, InProcessProductCache
from favorites.adapters.cache.redis_client import RedisClient, build_redis_client
from favorites.adapters.cache.setup import Caches, redis_caches
from favorites.adapters.catalog.local import LocalCatalog
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from favorites.domain.cursor import CursorCodec
from favorites.domain.models import Principal, PrincipalKind
from favorites.service_layer.clock import SystemClock
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.ports import Catalog
from favorites.service_layer.products import ProductsService
from favorites.service_layer.revocation import RevocationList
from favorites.service_layer.users import UsersService
from tests.integration.cache.servers import Cluster

SHARED_REDIS_URL = os.environ.get("FAVORITES_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
RUN_PREFIX = f"favtest:{os.getpid()}:{uuid.uuid4().hex[:8]}"

#: Timings for tests: the breaker probes again after 0.3 s, the epoch is re-read every 0.2 s.
#: The contract tests allow 1 s per call (a busy shared machine must not open the breaker); the
#: outage tests keep the production deadline on a Redis of their own.
FAST: dict[str, float] = {"reset_timeout": 0.3, "epoch_interval": 0.2}
PATIENT: dict[str, float] = {**FAST, "deadline": 1.0}


def user(user_id: uuid.UUID) -> Principal:
    return Principal(kind=PrincipalKind.USER, subject=str(user_id), user_id=user_id,
                     roles=frozenset({"user"}), token_id=uuid.uuid4().hex,
                     token_expires_at=2_000_000_000)


SERVICE = Principal(kind=PrincipalKind.SERVICE, subject="service:test",
                    scopes=frozenset({"products:write", "users:erase"}))


# --- a unit of work that counts and can hold loads ------------------------------------------


class Probe:
    """Counts the loads the caches are meant to save, and can hold them after the query ran."""

    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()
        self.kinds: set[str] = set()
        self.held = 0
        self._changed = asyncio.Condition()

    def hold_loads(self, *kinds: str) -> asyncio.Event:
        """Hold loads of ``kinds`` (page, count, existing) until the returned event is set."""
        self.hold = asyncio.Event()
        self.holding.clear()
        self.kinds = set(kinds)
        self.held = 0
        return self.hold

    async def wait_held(self, loads: int) -> None:
        """Until ``loads`` loads are being held."""
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: self.held >= loads)

    def release(self) -> None:
        assert self.hold is not None
        self.hold.set()
        self.hold = None

    async def loaded(self, what: str) -> None:
        self.loads[what] += 1
        hold = self.hold
        if hold is not None and what in self.kinds:
            self.holding.set()
            async with self._changed:
                self.held += 1
                self._changed.notify_all()
            await hold.wait()


class _Favorites:
    def __init__(self, inner: Any, probe: Probe):
        self._inner = inner
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def page(self, *args: Any) -> Any:
        result = await self._inner.page(*args)
        await self._probe.loaded("page")
        return result

    async def first_page(self, *args: Any) -> Any:
        result = await self._inner.first_page(*args)
        await self._probe.loaded("page")
        return result

    async def count_for_user(self, user_id: uuid.UUID) -> int:
        result: int = await self._inner.count_for_user(user_id)
        await self._probe.loaded("count")
        return result

    async def contains(self, *args: Any) -> Any:
        result = await self._inner.contains(*args)
        await self._probe.loaded("contains")
        return result


class _Products:
    def __init__(self, inner: Any, probe: Probe):
        self._inner = inner
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def existing(self, product_ids: Any) -> Any:
        result = await self._inner.existing(product_ids)
        await self._probe.loaded("existing")
        return result


class _UnitOfWork:
    def __init__(self, inner: SqlUnitOfWork, probe: Probe):
        self._inner = inner
        self._probe = probe

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        self.favorites = _Favorites(self._inner.favorites, self._probe)
        self.products = _Products(self._inner.products, self._probe)
        self.audit = self._inner.audit
        self.refresh_tokens = self._inner.refresh_tokens
        self.revoked_tokens = self._inner.revoked_tokens
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        await self._inner.commit()

    def wrote_for(self, user_ids: Iterable[uuid.UUID]) -> None:
        self._inner.wrote_for(user_ids)


class ProbedUnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine, probe: Probe):
        self._inner = SqlUnitOfWorkFactory(engine)
        self._probe = probe

    def __call__(self, *, readonly: bool = False, user_id: uuid.UUID | None = None) -> Any:
        """Only read-only units of work are probed: those are the loads caches save."""
        inner = self._inner(readonly=readonly, user_id=user_id)
        return _UnitOfWork(inner, self._probe) if readonly else inner


# --- an "instance": caches + services -------------------------------------------------------


@dataclass
class Instance:
    caches: Caches
    probe: Probe
    favorites: FavoritesService
    products: ProductsService
    users: UsersService
    catalog: Catalog
    lookups: Counter[tuple[str, str]]
    breaker_states: list[str] = field(default_factory=list)

    async def close(self) -> None:
        await self.caches.close()


class TableAsProductService:
    """A product service whose answers come from the products table: an external catalog (adds
    ask it first, so its answers are cached) that the tests can fill with ``register``."""

    in_store = False

    def __init__(self, uow: ProbedUnitOfWorkFactory):
        self._local = LocalCatalog(uow)

    async def existing(self, product_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return await self._local.existing(product_ids)

    async def forget(self, product_id: uuid.UUID) -> None:
        """Nothing kept here."""


def build_instance(engine: AsyncEngine, caches_factory: Any, *,
                   product_service: bool = False) -> Instance:
    """Wired as ``bootstrap`` wires it: the local catalog bare, a product service (here
    ``TableAsProductService``) behind the existence cache."""
    probe = Probe()
    lookups: Counter[tuple[str, str]] = Counter()
    states: list[str] = []
    caches: Caches = caches_factory(lambda name, result: lookups.update([(name, result)]),
                                    states.append)
    uow = ProbedUnitOfWorkFactory(engine, probe)
    catalog = caches.wrap_catalog(TableAsProductService(uow) if product_service
                                  else LocalCatalog(uow))
    clock = SystemClock()
    return Instance(
        caches=caches,
        probe=probe,
        favorites=FavoritesService(uow, catalog, caches.favorites, CursorCodec(b"k" * 32), clock,
                                   max_per_user=1000),
        products=ProductsService(uow, catalog, caches.favorites, clock),
        users=UsersService(uow, caches.favorites, clock, b"p" * 32, RevocationList(uow, clock),
                           token_leeway_seconds=0),
        catalog=catalog,
        lookups=lookups,
        breaker_states=states,
    )


def redis_instance(engine: AsyncEngine, client: RedisClient, *, product_service: bool = False,
                   **options: Any) -> Instance:
    prefix = options.pop("prefix", f"{RUN_PREFIX}:{uuid.uuid4().hex[:8]}")
    return build_instance(engine, lambda on_lookup, on_state: redis_caches(
        client, engine, prefix=prefix, on_lookup=on_lookup, on_breaker_state=on_state,
        **options), product_service=product_service)


def memory_instance(engine: AsyncEngine, *, product_service: bool = False) -> Instance:
    return build_instance(engine, lambda on_lookup, on_state: Caches(
        favorites=InProcessFavoritesCache(on_lookup=on_lookup),
        products=InProcessProductCache(on_lookup=on_lookup)), product_service=product_service)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, PoolSettings(2, 40, 5000))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real 3-master Redis Cluster on loopback ports, for the whole session."""
    started = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
async def shared_redis() -> AsyncIterator[RedisClient]:
    """A client of the shared Redis; every key this session wrote under RUN_PREFIX is removed."""
    client = build_redis_client(SHARED_REDIS_URL, timeout=1.0)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{RUN_PREFIX}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _instance(kind: str, request: pytest.FixtureRequest, engine: AsyncEngine,
                    shared: RedisClient, *, product_service: bool = False) -> Instance:
    if kind == "memory":
        built = memory_instance(engine, product_service=product_service)
    elif kind == "redis":
        built = redis_instance(engine, shared, owns_client=False, product_service=product_service,
                               **PATIENT)
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        client = build_redis_client(cluster.url, cluster=True, timeout=1.0)
        built = redis_instance(engine, client, product_service=product_service, **PATIENT)
    await built.caches.start()
    return built


@pytest.fixture(params=["memory", "redis", "cluster"])
async def instance(request: pytest.FixtureRequest, pg_engine: AsyncEngine,
                   shared_redis: RedisClient) -> AsyncIterator[Instance]:
    """One service instance on each cache: in-process, Redis, Redis Cluster."""
    built = await _instance(request.param, request, pg_engine, shared_redis)
    yield built
    await built.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def with_product_service(request: pytest.FixtureRequest, pg_engine: AsyncEngine,
                               shared_redis: RedisClient) -> AsyncIterator[Instance]:
    """As ``instance``, with a product service as the catalog, so existence is cached."""
    built = await _instance(request.param, request, pg_engine, shared_redis,
                            product_service=True)
    yield built
    await built.close()


@pytest.fixture(params=["redis", "cluster"])
async def redis_backed(request: pytest.FixtureRequest, pg_engine: AsyncEngine,
                       shared_redis: RedisClient) -> AsyncIterator[Instance]:
    """One service instance on Redis, and one on Redis Cluster."""
    built = await _instance(request.param, request, pg_engine, shared_redis)
    yield built
    await built.close()


async def new_product(instance: Instance) -> uuid.UUID:
    product = uuid.uuid4()
    assert await instance.products.register(SERVICE, product)
    return product
