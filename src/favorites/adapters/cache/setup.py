"""Which caches a process gets, from Settings (called by ``bootstrap``).

- ``FAVORITES_REDIS_URL`` set: the Redis caches (single node, or Cluster with
  ``FAVORITES_REDIS_CLUSTER=true``), guarded by a circuit breaker, keyed by the cache epoch.
- Unset, on SQLite with one worker (the embedded default): the in-process caches.
- Unset otherwise (several workers, or PostgreSQL, where several instances may share the
  database): no cache. An in-process cache cannot see the invalidations of other processes, and a
  user whose add went through one process must not get a stale list from another. On SQLite the
  database is a local file, so the cache buys little there anyway.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.cache import gate as gate_defaults
from favorites.adapters.cache.catalog import CachedCatalog, ProductExistenceCache
from favorites.adapters.cache.epoch import CacheEpoch
from favorites.adapters.cache.epoch_repository import CacheEpochRepository
from favorites.adapters.cache.gate import RedisGate
from favorites.adapters.cache.memory import InProcessFavoritesCache, InProcessProductCache
from favorites.adapters.cache.null import NullFavoritesCache
from favorites.adapters.cache.observer import LookupObserver, ignore_lookup
from favorites.adapters.cache.redis import PREFIX, RedisFavoritesCache, RedisProductCache
from favorites.adapters.cache.redis_client import RedisClient, server_identity
from favorites.service_layer.ports import Catalog, FavoritesCache


def _ignore_state(state: str) -> None:
    return None


@dataclass
class Caches:
    favorites: FavoritesCache
    products: ProductExistenceCache | None = None
    gate: RedisGate | None = None
    #: For ``Container.readiness_probes["cache"]``; None when there is nothing to probe.
    readiness: Callable[[], Awaitable[str]] | None = None
    _owned_client: RedisClient | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        if self.gate is not None:
            return "redis"
        return "none" if isinstance(self.favorites, NullFavoritesCache) else "in-process"

    def wrap_catalog(self, catalog: Catalog) -> Catalog:
        """A product service behind the existence cache; a catalog in the favorites' own store
        as it is: adds check that table in their own statement, so a cached answer would never
        be read, and each registration and deletion would still pay a cache write."""
        if self.products is None or catalog.in_store:
            return catalog
        return CachedCatalog(catalog, self.products)

    async def start(self) -> None:
        if self.gate is not None:
            await self.gate.epoch.start()

    async def close(self) -> None:
        if self.gate is not None:
            await self.gate.epoch.stop()
            await self.gate.close()
        if self._owned_client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection may fail; no matter
                await self._owned_client.aclose()


def worker_count() -> int:
    """Worker processes serving this app (``WEB_CONCURRENCY``, set by ``favorites serve``)."""
    try:
        return max(1, int(os.environ.get("WEB_CONCURRENCY", "1")))
    except ValueError:
        return 1


def redis_caches(
    client: RedisClient,
    primary: AsyncEngine,
    *,
    prefix: str = PREFIX,
    owns_client: bool = True,
    on_lookup: LookupObserver = ignore_lookup,
    on_breaker_state: Callable[[str], None] = _ignore_state,
    deadline: float = gate_defaults.DEADLINE,
    failure_threshold: int = gate_defaults.FAILURE_THRESHOLD,
    reset_timeout: float = gate_defaults.RESET_TIMEOUT,
    epoch_interval: float = 1.0,
) -> Caches:
    """The Redis caches on ``client``; ``prefix`` and the timings are for tests."""
    epoch = CacheEpoch(CacheEpochRepository(primary), interval=epoch_interval,
                       identity=functools.partial(server_identity, client))
    gate = RedisGate(client, epoch, deadline=deadline, failure_threshold=failure_threshold,
                     reset_timeout=reset_timeout, on_breaker_state=on_breaker_state)
    return Caches(
        favorites=RedisFavoritesCache(gate, prefix=prefix, on_lookup=on_lookup),
        products=RedisProductCache(gate, prefix=prefix, on_lookup=on_lookup),
        gate=gate,
        readiness=gate.readiness,
        _owned_client=client if owns_client else None,
    )


def build_caches(
    *,
    redis: RedisClient | None,
    primary: AsyncEngine,
    workers: int,
    on_lookup: LookupObserver = ignore_lookup,
    on_breaker_state: Callable[[str], None] = _ignore_state,
) -> Caches:
    """``redis``: the process's client when FAVORITES_REDIS_URL is set (closed by ``close``)."""
    if redis is not None:
        return redis_caches(redis, primary, on_lookup=on_lookup,
                            on_breaker_state=on_breaker_state)
    if primary.dialect.name == "sqlite" and workers == 1:
        return Caches(favorites=InProcessFavoritesCache(on_lookup=on_lookup),
                      products=InProcessProductCache(on_lookup=on_lookup))
    return Caches(favorites=NullFavoritesCache())
