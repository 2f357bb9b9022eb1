"""The cache contract, identical in process, on Redis and on Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from favorites.adapters.cache import policy
from favorites.adapters.cache.memory import Entries, Versions
from favorites.adapters.cache.redis import RedisFavoritesCache
from favorites.adapters.cache.redis_client import server_identity
from favorites.adapters.catalog.breaker import BreakerState
from favorites.adapters.db.recent_writers import RedisRecentWriters
from favorites.domain.models import Favorite
from favorites.domain.pages import FirstPage
from tests.integration.cache.conftest import Instance


def favorites_of(user_id: uuid.UUID, n: int) -> list[Favorite]:
    start = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
    return [Favorite(user_id, uuid.uuid4(), start - timedelta(microseconds=7 * i)) for i in range(n)]


async def test_a_stored_first_page_is_served_exactly(instance: Instance) -> None:
    cache = instance.caches.favorites
    user_id = uuid.uuid4()
    items = favorites_of(user_id, 51)
    assert (await cache.lookup_first_page(user_id))[0] is None
    await cache.set_first_page(user_id, FirstPage.of(user_id, items), await cache.version(user_id))
    page = (await cache.lookup_first_page(user_id))[0]
    assert page is not None
    assert page.favorites(51) == items
    assert page.favorites(3) == items[:3]
    assert page.rendered(2) == FirstPage.of(user_id, items[:2]).rendered(2)
    served = page.favorites(1)
    assert served[0].created_at.microsecond == 123456
    assert served[0].created_at.tzinfo is not None
    empty_user = uuid.uuid4()
    await cache.set_first_page(empty_user, FirstPage.of(empty_user, []),
                               await cache.version(empty_user))
    empty = (await cache.lookup_first_page(empty_user))[0]
    assert empty is not None
    assert empty.favorites(51) == []


async def test_a_stored_count_is_served(instance: Instance) -> None:
    cache = instance.caches.favorites
    user_id = uuid.uuid4()
    assert await cache.get_count(user_id) is None
    await cache.set_count(user_id, 0, await cache.version(user_id))
    assert await cache.get_count(user_id) == 0
    await cache.invalidate_user(user_id)
    await cache.set_count(user_id, 42, await cache.version(user_id))
    assert await cache.get_count(user_id) == 42


async def test_invalidation_drops_entries_and_refuses_loads_that_began_before_it(
    instance: Instance,
) -> None:
    cache = instance.caches.favorites
    user_id, other = uuid.uuid4(), uuid.uuid4()
    for who in (user_id, other):
        page = FirstPage.of(who, favorites_of(who, 2))
        await cache.set_first_page(who, page, await cache.version(who))
        await cache.set_count(who, 2, await cache.version(who))
    before = await cache.version(user_id)  # a reader took this, then loaded from the database
    await cache.invalidate_user(user_id)  # ... while a write committed
    assert (await cache.lookup_first_page(user_id))[0] is None
    assert await cache.get_count(user_id) is None
    await cache.set_first_page(user_id, FirstPage.of(user_id, favorites_of(user_id, 2)), before)
    await cache.set_count(user_id, 2, before)
    assert (await cache.lookup_first_page(user_id))[0] is None, "a pre-write load was stored"
    assert await cache.get_count(user_id) is None
    # Other users are untouched.
    assert await cache.get_count(other) == 2
    assert (await cache.lookup_first_page(other))[0] is not None


async def test_a_lookup_miss_hands_out_the_version_to_store_the_load_under(
    instance: Instance,
) -> None:
    """One round trip on a miss: the token from the lookup works like ``version()``'s, a load
    stored under it is served, and one that overlapped a write is refused."""
    cache = instance.caches.favorites
    user_id = uuid.uuid4()
    page, token = await cache.lookup_first_page(user_id)
    assert page is None
    await cache.set_first_page(user_id, FirstPage.of(user_id, favorites_of(user_id, 3)), token)
    found, _ = await cache.lookup_first_page(user_id)
    assert found is not None
    assert len(found) == 3
    await cache.invalidate_user(user_id)
    page, before = await cache.lookup_first_page(user_id)  # a reader missed, then loaded ...
    assert page is None
    await cache.invalidate_user(user_id)  # ... while a write committed
    await cache.set_first_page(user_id, FirstPage.of(user_id, favorites_of(user_id, 1)), before)
    assert (await cache.lookup_first_page(user_id))[0] is None, "a pre-write load was stored"


async def test_lookups_are_reported_by_cache_name(instance: Instance) -> None:
    cache = instance.caches.favorites
    user_id = uuid.uuid4()
    await cache.get_count(user_id)
    await cache.set_count(user_id, 1, await cache.version(user_id))
    await cache.get_count(user_id)
    (await cache.lookup_first_page(user_id))[0]
    assert instance.lookups[policy.FAVORITES_COUNT, "miss"] == 1
    assert instance.lookups[policy.FAVORITES_COUNT, "hit"] == 1
    assert instance.lookups[policy.FAVORITES_PAGE, "miss"] == 1


async def test_product_existence_is_remembered_and_forgotten(instance: Instance) -> None:
    products = instance.caches.products
    assert products is not None
    known, unknown = uuid.uuid4(), uuid.uuid4()
    hits, tokens = await products.known([known, unknown, known])
    assert hits == set()
    assert set(tokens) == {known, unknown}
    await products.remember([(known, tokens[known])])
    hits, tokens = await products.known([known, unknown])
    assert hits == {known}
    assert set(tokens) == {unknown}
    assert instance.lookups[policy.PRODUCT_EXISTS, "hit"] == 1

    await products.forget(known)
    hits, tokens = await products.known([known])
    assert hits == set()
    stale = tokens[known]
    await products.forget(known)  # deleted again while the lookup ran
    await products.remember([(known, stale)])
    assert (await products.known([known]))[0] == set(), "a lookup older than forget was stored"


async def test_redis_entries_expire_with_jittered_ttls(redis_backed: Instance) -> None:
    instance = redis_backed
    assert instance.caches.gate is not None
    cache = instance.caches.favorites
    assert isinstance(cache, RedisFavoritesCache)
    client = instance.caches.gate.client
    epoch = instance.caches.gate.epoch.current
    ttls = set()
    for _ in range(8):
        user_id = uuid.uuid4()
        page = FirstPage.of(user_id, favorites_of(user_id, 1))
        await cache.set_first_page(user_id, page, await cache.version(user_id))
        ttl = await client.pttl(f"{cache._user(user_id)}:{epoch}:p")
        assert 0.9 * policy.PAGE_TTL * 1000 - 1000 <= ttl <= 1.1 * policy.PAGE_TTL * 1000
        ttls.add(ttl // 1000)
    assert len(ttls) > 1, "TTLs are not jittered"


async def test_an_evicted_version_key_never_brings_back_an_entry_from_before_a_write(
    redis_backed: Instance,
) -> None:
    """Under ``maxmemory`` Redis may evict a user's version key and keep an entry. An entry
    stored before the user's first write, when no version key existed, used to be tagged "no
    version", and matched again once the write's version key was gone. The store now creates
    the version key it tags the entry with, so a missing key never matches anything."""
    instance = redis_backed
    assert instance.caches.gate is not None
    cache = instance.caches.favorites
    assert isinstance(cache, RedisFavoritesCache)
    client = instance.caches.gate.client
    user_id = uuid.uuid4()
    before, token = await cache.lookup_first_page(user_id)  # no version key yet
    assert before is None
    await cache.set_first_page(user_id, FirstPage.of(user_id, favorites_of(user_id, 1)), token)
    await cache.set_count(user_id, 1, await cache.version(user_id))
    assert await cache.get_count(user_id) == 1
    await cache.invalidate_user(user_id)  # a write
    await client.delete(f"{cache._user(user_id)}:v")  # evicted
    assert (await cache.lookup_first_page(user_id))[0] is None
    assert await cache.get_count(user_id) is None
    missed, token = await cache.lookup_first_page(user_id)  # stored anew after the eviction
    assert missed is None
    await cache.set_first_page(user_id, FirstPage.of(user_id, favorites_of(user_id, 2)), token)
    page = (await cache.lookup_first_page(user_id))[0]
    assert page is not None
    assert len(page) == 2


async def test_an_invalidation_whose_caller_is_cancelled_is_still_delivered(
    redis_backed: Instance,
) -> None:
    """The write is committed before its invalidation is sent: a request cancelled while the
    invalidation waits (here, for a connection to Redis) must not leave the old entry served."""
    instance = redis_backed
    gate = instance.caches.gate
    assert gate is not None
    cache = instance.caches.favorites
    user_id = uuid.uuid4()
    await cache.set_count(user_id, 1, await cache.version(user_id))
    assert await cache.get_count(user_id) == 1
    if gate.fast is not None:
        await gate.fast.aclose()  # the invalidation below waits for a new connection
    else:
        await gate.client.aclose()  # the cluster client discovers the nodes again
    invalidation = asyncio.ensure_future(cache.invalidate_user(user_id))
    await asyncio.sleep(0)  # started: waiting for the connection
    invalidation.cancel()
    with pytest.raises(asyncio.CancelledError):
        await invalidation
    await gate.close()  # as at shutdown: waits for the invalidation still on its way
    assert not gate._shielded
    assert await cache.get_count(user_id) is None


@pytest.mark.parametrize("failed_calls", [1, 2])
async def test_an_invalidation_is_sent_again_once_before_every_entry_is_retired(
    redis_backed: Instance, monkeypatch: pytest.MonkeyPatch, failed_calls: int,
) -> None:
    """A busy moment can drop the connection with an invalidation in flight. Retiring every
    entry of every instance for it (the epoch) emptied the whole cache under load; the
    invalidation is sent once more first, and only a second failure bumps the epoch."""
    instance = redis_backed
    gate = instance.caches.gate
    assert gate is not None
    cache = instance.caches.favorites
    assert isinstance(cache, RedisFavoritesCache)
    user_id = uuid.uuid4()
    await cache.set_count(user_id, 1, await cache.version(user_id))
    real_set, failures = cache._set, [failed_calls]

    async def flaky_set(key: str, value: bytes | str, ttl_ms: int) -> object:
        if failures[0]:
            failures[0] -= 1
            raise RedisConnectionError(f"connection to Redis lost ({failures[0]})")
        return await real_set(key, value, ttl_ms)

    monkeypatch.setattr(cache, "_set", flaky_set)
    epoch = gate.epoch.current
    await cache.invalidate_user(user_id)
    assert failures == [0]
    assert gate.breaker.state is BreakerState.CLOSED
    assert gate.epoch.bumps == failed_calls - 1
    assert (gate.epoch.current > epoch) is (failed_calls == 2)
    assert await cache.get_count(user_id) is None


async def test_a_users_keys_share_one_cluster_slot(redis_backed: Instance) -> None:
    """Every key of a user (and the read-your-writes mark) hashes to one slot, so multi-key
    commands work on Redis Cluster; asked of Redis itself on the cluster run."""
    instance = redis_backed
    assert instance.caches.gate is not None
    cache = instance.caches.favorites
    assert isinstance(cache, RedisFavoritesCache)
    user_id = uuid.uuid4()
    base = cache._user(user_id)
    keys = [f"{base}:v", f"{base}:0:p", f"{base}:12:c", RedisRecentWriters.key(user_id)]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    client = instance.caches.gate.client
    if isinstance(client, RedisCluster):
        assert len({await client.cluster_keyslot(key) for key in keys}) == 1


def test_in_process_entries_expire_jittered_and_stay_bounded() -> None:
    now = [1000.0]
    entries: Entries[int, str] = Entries(3, lambda: now[0])
    for key in range(5):
        entries.put(key, f"v{key}", 100)
    assert len(entries) == 3
    assert entries.get(0) is None
    assert entries.get(4) == "v4"
    now[0] += 89.9  # jitter never shortens a TTL by more than 10 %
    assert entries.get(4) == "v4"
    now[0] += 20.2  # nor lengthens it by more
    assert entries.get(4) is None


def test_in_process_versions_never_revalidate_an_old_token() -> None:
    versions: Versions[int] = Versions(max_keys=2)
    token = versions.token(1)
    versions.bump(1)
    for key in range(2, 10):  # 1's mark is forgotten; the floor rises past the old token
        versions.bump(key)
    assert versions.token(1) != token


async def test_the_server_identity_names_each_primary_and_is_stable(
        redis_backed: Instance) -> None:
    """One run_id on a single server; on the cluster, one per primary with its address."""
    gate = redis_backed.caches.gate
    assert gate is not None
    first = await server_identity(gate.client)
    assert first == await server_identity(gate.client)
    entries = first.split(" ")
    assert len(entries) == (3 if isinstance(gate.client, RedisCluster) else 1)
    assert all(len(entry.rsplit("=", 1)[-1]) == 40 for entry in entries)  # run_ids: 40 hex
