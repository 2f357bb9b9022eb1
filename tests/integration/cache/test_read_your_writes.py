"""Through the use cases, on each cache: a user never sees their own write missing.

The races are made deterministic by holding a reader right after its database load (``Probe``)
or a writer between its commit and its invalidation (``HeldInvalidations``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.cache import policy
from favorites.adapters.cache.null import NullFavoritesCache
from favorites.adapters.cache.redis import RedisFavoritesCache
from favorites.adapters.cache.redis_client import RedisClient
from favorites.adapters.cache.setup import Caches
from favorites.domain.errors import ProductNotFound
from favorites.domain.models import Favorite
from tests.integration.cache.conftest import (
    PATIENT,
    RUN_PREFIX,
    SERVICE,
    Instance,
    build_instance,
    new_product,
    redis_instance,
    user,
)


async def listed(instance: Instance, user_id: uuid.UUID) -> set[uuid.UUID]:
    page = await instance.favorites.list_page(user(user_id), user_id)
    return {f.product_id for f in page.items}


async def add(instance: Instance, user_id: uuid.UUID, product_id: uuid.UUID) -> None:
    await instance.favorites.add(user(user_id), user_id, product_id)


async def test_add_remove_list_and_count_are_read_back_at_once(instance: Instance) -> None:
    user_id, p1, p2 = uuid.uuid4(), await new_product(instance), await new_product(instance)
    await add(instance, user_id, p1)
    assert await listed(instance, user_id) == {p1}
    assert await instance.favorites.count(user(user_id), user_id) == 1
    loads = instance.probe.loads.copy()
    assert await listed(instance, user_id) == {p1}  # served by the cache
    assert await instance.favorites.count(user(user_id), user_id) == 1
    assert instance.probe.loads == loads
    await add(instance, user_id, p2)
    assert await listed(instance, user_id) == {p1, p2}
    assert await instance.favorites.count(user(user_id), user_id) == 2
    await instance.favorites.remove(user(user_id), user_id, p1)
    assert await listed(instance, user_id) == {p2}
    assert await instance.favorites.count(user(user_id), user_id) == 1
    page = await instance.favorites.list_page(user(user_id), user_id, limit=1)
    assert [f.product_id for f in page.items] == [p2]
    assert page.next_cursor is None


async def test_contains_is_answered_from_the_cached_page_and_sees_every_own_write(
    instance: Instance,
) -> None:
    user_id, p1, p2 = uuid.uuid4(), await new_product(instance), await new_product(instance)
    owner, unknown = user(user_id), uuid.uuid4()
    await add(instance, user_id, p1)
    assert await instance.favorites.contains(owner, user_id, [p2, p1, unknown, p1]) == [p1]
    assert instance.probe.loads["contains"] == 0  # the page was loaded (and cached) instead
    loads = instance.probe.loads.copy()
    assert await instance.favorites.contains(owner, user_id, [p1, p2]) == [p1]
    assert await listed(instance, user_id) == {p1}
    assert instance.probe.loads == loads  # both from the cache
    await add(instance, user_id, p2)
    assert await instance.favorites.contains(owner, user_id, [p1, p2]) == [p1, p2]
    await instance.favorites.remove(owner, user_id, p1)
    assert await instance.favorites.contains(owner, user_id, [p1, p2]) == [p2]


async def test_contains_asks_the_database_when_the_first_page_is_not_all(
    instance: Instance,
) -> None:
    """51 favorites: the oldest is not on the cached page, so the page cannot say it is absent."""
    user_id = uuid.uuid4()
    products = [await new_product(instance) for _ in range(51)]
    for product in products:
        await add(instance, user_id, product)
    oldest, newest = products[0], products[-1]
    asked = [oldest, uuid.uuid4(), newest]
    assert await instance.favorites.contains(user(user_id), user_id, asked) == [oldest, newest]
    assert instance.probe.loads["contains"] == 1


async def test_without_a_cache_contains_asks_the_database_and_loads_no_page(
    pg_engine: AsyncEngine,
) -> None:
    """PostgreSQL without Redis keeps nothing: a page loaded for ``contains`` would only cost."""
    bare = build_instance(pg_engine, lambda on_lookup, on_state: Caches(
        favorites=NullFavoritesCache()))
    user_id, p1 = uuid.uuid4(), await new_product(bare)
    await add(bare, user_id, p1)
    assert await bare.favorites.contains(user(user_id), user_id, [p1, uuid.uuid4()]) == [p1]
    assert (bare.probe.loads["contains"], bare.probe.loads["page"]) == (1, 0)


async def test_a_read_repopulating_while_a_write_commits_cannot_hide_the_write(
    instance: Instance,
) -> None:
    """Reader: version, load (sees only p1) ... held ... store. Writer: commit p2, invalidate.
    The reader's store comes last and must not be what the next read gets."""
    user_id, p1, p2 = uuid.uuid4(), await new_product(instance), await new_product(instance)
    await add(instance, user_id, p1)
    instance.probe.hold_loads("page", "count")
    reader = asyncio.create_task(instance.favorites.list_page(user(user_id), user_id))
    counter = asyncio.create_task(instance.favorites.count(user(user_id), user_id))
    await instance.probe.wait_held(2)  # both loads ran and are held, before their stores
    await add(instance, user_id, p2)  # commit + invalidation while they are held
    instance.probe.release()
    old_page, old_count = await reader, await counter
    assert {f.product_id for f in old_page.items} == {p1}
    assert old_count == 1
    assert await listed(instance, user_id) == {p1, p2}
    assert await instance.favorites.count(user(user_id), user_id) == 2


class HeldInvalidations:
    """Wraps a FavoritesCache; ``invalidate_user`` waits for ``release`` (the writer is held
    between its commit and its invalidation)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def invalidate_user(self, user_id: uuid.UUID) -> None:
        self.reached.set()
        await self.release.wait()
        await self._inner.invalidate_user(user_id)


async def test_a_stale_load_stored_before_the_invalidation_is_dropped_by_it(
    instance: Instance, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_id, p1, p2 = uuid.uuid4(), await new_product(instance), await new_product(instance)
    await add(instance, user_id, p1)
    held = HeldInvalidations(instance.caches.favorites)
    monkeypatch.setattr(instance.favorites, "_cache", held)
    instance.probe.hold_loads("page")
    reader = asyncio.create_task(instance.favorites.list_page(user(user_id), user_id))
    await asyncio.wait_for(instance.probe.holding.wait(), 5)  # loaded [p1], not stored yet
    writer = asyncio.create_task(add(instance, user_id, p2))
    await asyncio.wait_for(held.reached.wait(), 5)  # p2 committed, invalidation not yet sent
    instance.probe.release()
    await reader  # stores [p1] under the version it read, which is still current
    held.release.set()
    await writer  # the write is answered only now: from here on p2 must show
    assert await listed(instance, user_id) == {p1, p2}


async def test_concurrent_misses_of_one_key_load_once(instance: Instance) -> None:
    user_id, product = uuid.uuid4(), await new_product(instance)
    await add(instance, user_id, product)
    probe = instance.probe
    probe.loads.clear()
    probe.hold_loads("page", "count")
    readers = [asyncio.create_task(instance.favorites.list_page(user(user_id), user_id, limit=n))
               for n in range(1, 21)]
    counters = [asyncio.create_task(instance.favorites.count(user(user_id), user_id))
                for _ in range(20)]
    await asyncio.wait_for(probe.holding.wait(), 5)
    await asyncio.sleep(0.2)  # every reader has missed and joined (Redis answers in ~1 ms)
    probe.release()
    pages = await asyncio.gather(*readers)
    counts = await asyncio.gather(*counters)
    assert all(page.items[0].product_id == product for page in pages)
    assert counts == [1] * 20
    assert probe.loads["page"] == 1
    assert probe.loads["count"] == 1


async def test_concurrent_existence_misses_of_one_product_look_up_once(
    with_product_service: Instance,
) -> None:
    instance = with_product_service
    product = await new_product(instance)
    probe = instance.probe
    probe.loads.clear()
    probe.hold_loads("existing")
    lookups = [asyncio.create_task(instance.catalog.existing([product])) for _ in range(10)]
    await asyncio.wait_for(probe.holding.wait(), 5)
    await asyncio.sleep(0.2)
    probe.release()
    assert await asyncio.gather(*lookups) == [{product}] * 10
    assert probe.loads["existing"] == 1
    assert await instance.catalog.existing([product]) == {product}  # now a cache hit
    assert probe.loads["existing"] == 1


async def test_a_single_add_checks_the_local_catalog_in_its_own_statement(
    instance: Instance,
) -> None:
    product = await new_product(instance)
    probe = instance.probe
    probe.loads.clear()
    await add(instance, uuid.uuid4(), product)
    with pytest.raises(ProductNotFound):
        await add(instance, uuid.uuid4(), uuid.uuid4())
    assert probe.loads["existing"] == 0


async def test_erasure_and_product_deletion_invalidate(instance: Instance) -> None:
    user_id, keep, gone = uuid.uuid4(), await new_product(instance), await new_product(instance)
    for product in (keep, gone):
        await add(instance, user_id, product)
    assert await listed(instance, user_id) == {keep, gone}  # cached

    await instance.products.delete(SERVICE, gone)
    with pytest.raises(ProductNotFound):
        await add(instance, uuid.uuid4(), gone)
    await instance.products.purge_favorites(gone)
    assert await listed(instance, user_id) == {keep}
    assert await instance.favorites.count(user(user_id), user_id) == 1

    assert await instance.users.erase(SERVICE, user_id) == 1
    assert await listed(instance, user_id) == set()
    assert await instance.favorites.count(user(user_id), user_id) == 0


async def test_an_erasure_deletes_the_users_entries_from_redis(redis_backed: Instance) -> None:
    """SPEC: an erasure purges caches. Made unreachable is not enough: the page names the
    user's products, and would stay in Redis until its TTL."""
    instance, user_id = redis_backed, uuid.uuid4()
    await add(instance, user_id, await new_product(instance))
    assert len(await listed(instance, user_id)) == 1
    assert await instance.favorites.count(user(user_id), user_id) == 1
    cache = instance.caches.favorites
    assert isinstance(cache, RedisFavoritesCache)
    client = cache._gate.client
    entries = [f"{cache._user(user_id)}:{cache._gate.epoch.current}:{kind}" for kind in "pc"]
    assert await client.exists(*entries) == 2  # the page and the count, cached
    await instance.users.erase(SERVICE, user_id)
    assert await client.exists(*entries) == 0
    assert await listed(instance, user_id) == set()


async def test_a_product_service_deletion_forgets_the_cached_existence(
    with_product_service: Instance,
) -> None:
    instance = with_product_service
    gone = await new_product(instance)
    await add(instance, uuid.uuid4(), gone)  # asks the product service: cached as existing
    assert await instance.catalog.existing([gone]) == {gone}
    assert instance.lookups[policy.PRODUCT_EXISTS, "hit"] == 1

    await instance.products.delete(SERVICE, gone)
    assert await instance.catalog.existing([gone]) == set()
    with pytest.raises(ProductNotFound):
        await add(instance, uuid.uuid4(), gone)


@pytest.mark.parametrize("product_service", [False, True])
async def test_the_local_catalog_keeps_nothing_in_the_existence_cache(
    pg_engine: AsyncEngine, shared_redis: RedisClient, product_service: bool,
) -> None:
    """Adds check the local table in their own statement, so caching its answers would only cost
    a Redis write per registration and deletion; a product service's answers are cached."""
    prefix = f"{RUN_PREFIX}:{uuid.uuid4().hex[:8]}"
    instance = redis_instance(pg_engine, shared_redis, owns_client=False, prefix=prefix,
                              product_service=product_service, **PATIENT)
    await instance.caches.start()
    try:
        product, user_id = await new_product(instance), uuid.uuid4()
        await add(instance, user_id, product)
        await add(instance, user_id, product)  # again: a product service's answer is now cached
        await instance.products.delete(SERVICE, product)
        keys = [key async for key in shared_redis.scan_iter(match=f"{prefix}:{{p:*", count=1000)]
        looked_up = sum(n for (name, _), n in instance.lookups.items()
                        if name == policy.PRODUCT_EXISTS)
    finally:
        await instance.close()
    assert (bool(keys), looked_up) == ((True, 2) if product_service else (False, 0))


async def test_a_cached_page_keeps_the_database_order(instance: Instance) -> None:
    user_id = uuid.uuid4()
    products = [await new_product(instance) for _ in range(3)]
    for product in products:
        await add(instance, user_id, product)
    first = await instance.favorites.list_page(user(user_id), user_id)
    second = await instance.favorites.list_page(user(user_id), user_id)  # from the cache
    assert first == second
    assert [f.product_id for f in second.items] == products[::-1]
    assert all(isinstance(f, Favorite) for f in second.items)
