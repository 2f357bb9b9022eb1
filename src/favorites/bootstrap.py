"""The composition root: turns Settings into adapters and services, and nothing else does."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from favorites import embedded
from favorites.adapters.cache.redis_client import RedisClient, build_redis_client
from favorites.adapters.cache.setup import Caches, build_caches, worker_count
from favorites.adapters.catalog.breaker import BreakerState, CircuitBreaker
from favorites.adapters.catalog.http import HttpCatalog
from favorites.adapters.catalog.local import LocalCatalog
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.recent_writers import (
    InProcessRecentWriters,
    RecentWriters,
    RedisRecentWriters,
)
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.adapters.flags import FlagsFileError, OpenFeatureFlags
from favorites.adapters.ratelimit import (
    ADDRESS,
    SERVICE,
    USER,
    InProcessRateLimiter,
    RateLimit,
    RateLimiter,
    RedisRateLimiter,
    build_storage,
)
from favorites.adapters.tokens.jwt import JwtCodec
from favorites.config import ConfigError, ServiceClient, Settings
from favorites.domain.cursor import CursorCodec
from favorites.observability.db import instrument_engine
from favorites.observability.metrics import record_cache_request, set_circuit_breaker_state
from favorites.observability.tracing import inject_headers
from favorites.service_layer.clock import SystemClock
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.ports import Catalog
from favorites.service_layer.products import ProductsService
from favorites.service_layer.revocation import RevocationList
from favorites.service_layer.tokens import TokenService
from favorites.service_layer.users import UsersService
from favorites.tasks import cancel_and_wait, stop_if_cancelled, wait_for_writes

log = logging.getLogger("favorites.products")

#: How long the shutdown waits for writes still running (the statement timeout bounds them), then
#: for background work (a product's purge; the next instance to start finishes one cut off). The
#: pod's grace period must cover both after the drain and the in-flight requests.
WRITES_WAIT_SECONDS = 5
TASKS_WAIT_SECONDS = 10


@dataclass
class Container:
    """Everything a request handler may use, built once per process."""

    settings: Settings
    database_url: str
    engine: AsyncEngine
    jwt: JwtCodec
    revocations: RevocationList
    favorites: FavoritesService
    products: ProductsService
    tokens: TokenService
    users: UsersService
    service_clients: tuple[ServiceClient, ...]
    rate_limiter: RateLimiter
    #: Feature flags (FAVORITES_FLAGS_FILE; every flag at its default without one).
    flags: OpenFeatureFlags = field(default_factory=lambda: OpenFeatureFlags(None))
    draining: bool = False
    #: The unit-of-work factory: primary + replica engines (``database.replicas``) and routing.
    database: SqlUnitOfWorkFactory | None = None
    #: The product service client when FAVORITES_PRODUCT_SERVICE_URL is set (opened at start).
    http_catalog: HttpCatalog | None = None
    #: The favorites and product-existence caches (Redis, in-process or none) and their client.
    caches: Caches | None = None
    #: Extra readiness checks (cache, product service): name -> "ok" or a reason. Not fatal.
    readiness_probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _resuming: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if self.http_catalog is not None:
            self.readiness_probes.setdefault("product_service", self.http_catalog.readiness)
        if self.caches is not None and self.caches.readiness is not None:
            self.readiness_probes.setdefault("cache", self.caches.readiness)
        if self.settings.flags_file is not None:
            self.readiness_probes.setdefault("flags", self.flags.readiness)

    async def start(self) -> None:
        self.flags.start()
        if self.database is not None:
            await self.database.warm()  # the pools' minimum of connections, before traffic
        await self.revocations.start()
        if self.caches is not None:
            await self.caches.start()  # the cache epoch's poll loop; never blocks start-up
        if self.http_catalog is not None:
            await self.http_catalog.start()
        self._resuming = asyncio.create_task(resume_purges(self.products), name="resume-purges")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run work past the response (product purge); kept referenced and awaited at close."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        # Resuming is retried until the database answers; any instance's next start finishes it.
        await cancel_and_wait(self._resuming)
        await wait_for_writes(within=WRITES_WAIT_SECONDS)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TASKS_WAIT_SECONDS)
        await self.revocations.stop()
        if self.http_catalog is not None:
            await self.http_catalog.aclose()
        await self.rate_limiter.close()
        self.flags.close()
        if self.caches is not None:
            await self.caches.close()  # after the tasks: a product purge invalidates caches
        if self.database is not None:
            await self.database.dispose()  # the primary's and every replica's pool
        else:
            await self.engine.dispose()


#: Seconds between attempts to resume unfinished purges while the database cannot answer.
RESUME_RETRY_SECONDS = 30.0


async def resume_purges(products: ProductsService, retry_every: float = RESUME_RETRY_SECONDS
                        ) -> None:
    """In the background: start-up does not wait for a purge a previous process left. An
    instance that starts while the database is down tries again every ``retry_every`` seconds
    until it answers, rather than leave the favorites of deleted products until the next start.
    One WARN when it first fails, one INFO when it is done."""
    failures = 0
    while True:
        try:
            removed = await products.resume_purges()
        except Exception:
            stop_if_cancelled()  # a shutdown's cancellation that the failure hid
            failures += 1
            if failures == 1:
                log.warning("resuming unfinished product purges failed; retrying every %g s",
                            retry_every, exc_info=True)
            await asyncio.sleep(retry_every)
            continue
        if removed or failures:
            log.info("unfinished product purges resumed",
                     extra={"removed": removed, "failedAttempts": failures})
        return


def build_jwt(settings: Settings, defaults: embedded.EmbeddedDefaults) -> JwtCodec:
    common: dict[str, Any] = {
        "algorithm": settings.jwt_algorithm,
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
        "ttl_seconds": settings.access_token_ttl_seconds,
        "leeway_seconds": settings.jwt_leeway_seconds,
    }
    if settings.jwt_algorithm == "HS256":
        return JwtCodec(secret=defaults.jwt_secret, **common)
    assert settings.jwt_private_key_file is not None  # enforced by load_settings
    return JwtCodec.from_files(settings.jwt_private_key_file, settings.jwt_public_key_files,
                               **common)


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared through Redis when ``FAVORITES_REDIS_URL`` is set (in process while it fails)."""
    rates = {
        USER: RateLimit.parse(settings.rate_limit),
        ADDRESS: RateLimit.parse(settings.rate_limit),  # before sign-in and failed sign-ins
        SERVICE: RateLimit.parse(settings.service_rate_limit),
    }
    if settings.redis_url is None:
        return InProcessRateLimiter(rates)
    return RedisRateLimiter(
        build_storage(settings.redis_url, settings.redis_cluster), rates,
        on_state=functools.partial(set_circuit_breaker_state, "ratelimit_redis"),
    )


def root_secret(settings: Settings, defaults: embedded.EmbeddedDefaults) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if defaults.jwt_secret is not None:
        return defaults.jwt_secret
    assert settings.jwt_private_key_file is not None
    return settings.jwt_private_key_file.read_bytes()


def build_database(settings: Settings, primary: AsyncEngine,
                   redis: RedisClient | None = None) -> SqlUnitOfWorkFactory:
    """Primary plus one engine per replica (same pool sizes and timeout). Replica engines ping
    on checkout and connect with a short timeout, so a dead replica is skipped, not an error."""
    pool = PoolSettings(settings.database_pool_min, settings.database_pool_max,
                        settings.database_statement_timeout_ms)
    replicas = [
        create_engine(url, pool, application_name="favorites-replica", pre_ping=True,
                      connect_timeout=2)
        for url in settings.database_replica_urls
    ]
    # With Redis the marks are shared: a user's next read may land on another instance.
    writers: RecentWriters = (
        InProcessRecentWriters(settings.read_your_writes_seconds) if redis is None
        else RedisRecentWriters(redis, settings.read_your_writes_seconds)
    )
    return SqlUnitOfWorkFactory(primary, replicas=replicas, recent_writers=writers,
                                pool_minimum=settings.database_pool_min)


def build_flags(settings: Settings) -> OpenFeatureFlags:
    """ConfigError naming the variable when FAVORITES_FLAGS_FILE is set but unusable (nothing is
    started here, so ``favorites serve`` also calls it to check before starting workers)."""
    try:
        return OpenFeatureFlags(settings.flags_file)
    except FlagsFileError as exc:
        raise ConfigError(f"FAVORITES_FLAGS_FILE: {exc}") from None


def _product_service_state(_old: BreakerState, new: BreakerState) -> None:
    set_circuit_breaker_state("product_service", new.value)


def build(settings: Settings, defaults: embedded.EmbeddedDefaults | None = None) -> Container:
    defaults = defaults or embedded.resolve(settings)
    clock = SystemClock()
    engine = create_engine(
        defaults.database_url,
        PoolSettings(settings.database_pool_min, settings.database_pool_max,
                     settings.database_statement_timeout_ms),
    )
    redis = (build_redis_client(settings.redis_url, cluster=settings.redis_cluster)
             if settings.redis_url is not None else None)  # connects lazily, on first use
    uow = build_database(settings, engine, redis)
    instrument_engine(engine, "primary", settings.database_pool_max)
    for replica in uow.replicas:
        instrument_engine(replica, "replica", settings.database_pool_max)
    caches = build_caches(
        redis=redis, primary=engine, workers=worker_count(), on_lookup=record_cache_request,
        on_breaker_state=functools.partial(set_circuit_breaker_state, "redis"),
    )
    cache = caches.favorites
    catalog: Catalog
    http_catalog: HttpCatalog | None = None
    if settings.product_service_url is not None:
        http_catalog = catalog = HttpCatalog(
            settings.product_service_url,
            connect_timeout=settings.product_service_connect_timeout,
            read_timeout=settings.product_service_read_timeout,
            breaker=CircuitBreaker("product_service", on_state_change=_product_service_state),
            inject_headers=inject_headers,  # W3C traceparent on every product-service call
        )
        _product_service_state(BreakerState.CLOSED, BreakerState.CLOSED)
    else:
        catalog = LocalCatalog(uow.on_primary())  # a product registered just now must exist
    # A product service's answers cached ("exists" only): with it down, adds of products it
    # remembers keep working. The local table is not cached (see ``wrap_catalog``).
    catalog = caches.wrap_catalog(catalog)
    jwt_codec = build_jwt(settings, defaults)
    root = root_secret(settings, defaults)
    # On the primary: a lagging replica would fail open. Kept while the codec's leeway still
    # accepts a token after its expiry.
    revocations = RevocationList(uow.on_primary(), clock, leeway=settings.jwt_leeway_seconds)
    rate_limiter = build_rate_limiter(settings)
    flags = build_flags(settings)
    return Container(
        settings=settings,
        database_url=defaults.database_url,
        engine=engine,
        database=uow,
        jwt=jwt_codec,
        revocations=revocations,
        favorites=FavoritesService(
            uow, catalog, cache, CursorCodec(embedded.derive_key(root, "cursor")), clock,
            settings.max_favorites_per_user, flags,
        ),
        products=ProductsService(uow, catalog, cache, clock,
                                 catalog_is_local=http_catalog is None),
        tokens=TokenService(uow, jwt_codec, revocations, clock,
                            settings.refresh_token_ttl_seconds,
                            token_leeway_seconds=settings.jwt_leeway_seconds),
        users=UsersService(uow, cache, clock, embedded.derive_key(root, "audit-pseudonym"),
                           revocations, token_leeway_seconds=settings.jwt_leeway_seconds),
        service_clients=defaults.service_clients,
        http_catalog=http_catalog,
        caches=caches,
        rate_limiter=rate_limiter,
        flags=flags,
        readiness_probes={"rate_limiter": rate_limiter.readiness} if settings.redis_url else {},
    )
