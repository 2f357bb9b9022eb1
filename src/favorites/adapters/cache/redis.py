"""The caches in Redis (single node or Cluster): a user's first page and count, product existence.

Keys (``<prefix>`` is ``fav``; ``<e>`` the cache epoch, see ``epoch``):

- ``fav:{u:<user>}:v`` the user's version, ``fav:{u:<user>}:<e>:p`` first page,
  ``fav:{u:<user>}:<e>:c`` count. The ``{u:<user>}`` hash tag puts a user's keys in one Cluster
  slot (the read-your-writes mark ``{u:<user>}:rw`` too), so the two-key ``MGET`` works on Cluster.
- ``fav:{p:<product>}:v`` and ``fav:{p:<product>}:<e>:e`` for product existence.

Race-free cache-aside without a script: every entry is tagged with the version it was loaded
under, and a read is a hit only when the tag equals the current version (one ``MGET`` of entry and
version). A reader takes the version *before* loading from the database; a writer commits, then
sets a new random version. So a load that overlapped a write is stored under the old version and is
never served, whatever the interleaving, and an invalidation needs no knowledge of the epoch.
Version keys outlive the entries they validate (``policy``), and versions are random, so a version
key that expires and is set again never revalidates an old entry. A load that found no version
key creates one (``SET NX``, sent with the entry) and tags the entry with it; a missing version key
matches nothing, so one that Redis evicts under ``maxmemory`` cannot revalidate an entry either.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any
from uuid import UUID

from redis.asyncio import RedisCluster

from favorites.adapters.cache import codec, policy
from favorites.adapters.cache.gate import SKIPPED, RedisGate
from favorites.adapters.cache.observer import LookupObserver, ignore_lookup
from favorites.adapters.catalog.breaker import BreakerState
from favorites.domain.pages import FirstPage

PREFIX = "fav"


def _new_version() -> str:
    return str(secrets.randbelow((1 << 62) - 1) + 1)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class _RedisCache:
    def __init__(self, gate: RedisGate, *, prefix: str = PREFIX,
                 on_lookup: LookupObserver = ignore_lookup):
        self._gate = gate
        self._prefix = prefix
        self._on_lookup = on_lookup

    async def _mget(self, keys: list[str]) -> list[Any] | None:
        """Values of ``keys`` (one slot per entry/version pair); None when Redis was skipped."""
        client, fast = self._gate.client, self._gate.fast
        if fast is not None:
            result = await self._gate.call(
                lambda: fast.execute("MGET", *keys, wait_for_connection=False), read=True,
                bounded=True)
        elif isinstance(client, RedisCluster) and len(keys) > 2:
            result = await self._gate.call(lambda: client.mget_nonatomic(keys), read=True)
        else:
            result = await self._gate.call(lambda: client.mget(keys), read=True)
        return None if result is SKIPPED else list(result)

    def _set(self, key: str, value: bytes | str, ttl_ms: int) -> Awaitable[Any]:
        fast = self._gate.fast
        if fast is not None:
            return fast.execute("SET", key, value, "PX", ttl_ms)
        return self._gate.client.set(key, value, px=ttl_ms)

    async def _bump_version(self, key: str, ttl: float) -> None:
        """Shielded: the write it follows is committed, so a caller cancelled now (a shutdown)
        must not take the invalidation with it; it is delivered, or the epoch bumped."""
        await self._gate.shielded(self._deliver_version(key, ttl))

    async def _deliver_version(self, key: str, ttl: float) -> None:
        gate = self._gate

        def send() -> Awaitable[Any]:
            return self._set(key, _new_version(), _ms(ttl))

        delivered = await gate.call(send, bounded=gate.fast is not None)
        if delivered is SKIPPED and gate.breaker.state is BreakerState.CLOSED:
            # One failed call is not yet Redis failing: a connection dropped while this process
            # was busy fails every command in flight. Once more (on a new connection) before
            # every entry of every instance is retired for it; an open breaker (Redis failing
            # for several calls) is not asked again.
            delivered = await gate.call(send, bounded=gate.fast is not None)
        if delivered is SKIPPED:
            # Lost invalidation: an entry stored before the write may still be in Redis (and
            # Redis may come back with it): retire every entry by moving to a new epoch.
            await self._gate.epoch.bump()

    async def _version_token(self, key: str) -> int:
        gate = self._gate
        if not gate.usable:
            return gate.bypass_token()
        epoch = gate.epoch.current
        fast = gate.fast
        version = await gate.call(
            lambda: fast.execute("GET", key, wait_for_connection=False) if fast is not None
            else gate.client.get(key),
            read=True, bounded=fast is not None)
        if version is SKIPPED:
            return gate.bypass_token()
        return codec.make_token(epoch, version)

    async def _store(self, base: str, kind: str, token: int, payload: bytes,
                     ttl: float, version_ttl: float) -> None:
        gate = self._gate
        if token < 0 or not gate.usable:
            return
        epoch, version = codec.split_token(token)
        if epoch != gate.epoch.current:
            return  # loaded under a retired epoch: it would never be read
        key, ttl_ms = f"{base}:{epoch}:{kind}", _ms(policy.jittered(ttl))
        if version != b"0":
            await gate.call(lambda: self._set(key, codec.tag(version, payload), ttl_ms),
                            bounded=gate.fast is not None)
            return
        # No version key when it was looked up: create one (unless a write did meanwhile) and
        # tag the entry with it. Should a write's version key be evicted later, a reader creates
        # a new one, so no entry from before that write can match again.
        new = _new_version().encode()
        await gate.call(lambda: self._set_with_new_version(
            f"{base}:v", new, _ms(version_ttl), key, codec.tag(new, payload), ttl_ms),
            bounded=gate.fast is not None)

    async def _set_with_new_version(self, version_key: str, version: bytes, version_ttl_ms: int,
                                    key: str, value: bytes, ttl_ms: int) -> None:
        """``SET version NX`` and the entry, one round trip on the multiplexed connection. If the
        version key existed already (a write came in between), the entry carries a version that
        is not current and is never served."""
        fast = self._gate.fast
        if fast is not None:
            await fast.execute_many(("SET", version_key, version, "PX", version_ttl_ms, "NX"),
                                    ("SET", key, value, "PX", ttl_ms))
            return
        client = self._gate.client
        await client.set(version_key, version, px=version_ttl_ms, nx=True)
        await client.set(key, value, px=ttl_ms)


class RedisFavoritesCache(_RedisCache):
    """Implements the ``FavoritesCache`` port."""

    keeps_pages = True

    def _user(self, user_id: UUID) -> str:
        return f"{self._prefix}:{{u:{user_id}}}"

    async def lookup_first_page(self, user_id: UUID) -> tuple[FirstPage | None, int]:
        # The MGET that fetches the entry fetches the version too: a miss needs no second trip.
        payload, token = await self._lookup(user_id, "p", policy.FAVORITES_PAGE)
        if payload is None:
            return None, token
        page = FirstPage.decode(user_id, payload)
        self._on_lookup(policy.FAVORITES_PAGE, "miss" if page is None else "hit")
        return page, token

    async def get_count(self, user_id: UUID) -> int | None:
        payload = await self._get(user_id, "c", policy.FAVORITES_COUNT)
        if payload is None:
            return None
        count = codec.decode_count(payload)
        self._on_lookup(policy.FAVORITES_COUNT, "miss" if count is None else "hit")
        return count

    async def version(self, user_id: UUID) -> int:
        return await self._version_token(f"{self._user(user_id)}:v")

    async def set_first_page(self, user_id: UUID, page: FirstPage, version: int) -> None:
        await self._store(self._user(user_id), "p", version, page.payload, policy.PAGE_TTL,
                          policy.USER_VERSION_TTL)

    async def set_count(self, user_id: UUID, count: int, version: int) -> None:
        await self._store(self._user(user_id), "c", version, codec.encode_count(count),
                          policy.COUNT_TTL, policy.USER_VERSION_TTL)

    async def invalidate_user(self, user_id: UUID) -> None:
        await self._bump_version(f"{self._user(user_id)}:v", policy.USER_VERSION_TTL)

    async def purge_user(self, user_id: UUID) -> None:
        """After the invalidation, the entries themselves: those of the current epoch (an older
        epoch's are never read again and expire with their TTL). A Redis that cannot be reached
        now keeps them, unreachable, for at most that TTL."""
        await self.invalidate_user(user_id)
        gate, base = self._gate, self._user(user_id)
        keys = [f"{base}:{gate.epoch.current}:{kind}" for kind in ("p", "c")]
        fast = gate.fast
        await gate.call(lambda: fast.execute("DEL", *keys) if fast is not None
                        else gate.client.delete(*keys), bounded=fast is not None)

    async def _get(self, user_id: UUID, kind: str, cache_name: str) -> bytes | None:
        return (await self._lookup(user_id, kind, cache_name))[0]

    async def _lookup(self, user_id: UUID, kind: str, cache_name: str) -> tuple[bytes | None, int]:
        """The entry's payload if it is current, and the version token a load would be stored
        under; records the miss/error (the caller the hit)."""
        gate = self._gate
        if not gate.usable:
            self._on_lookup(cache_name, "error")
            return None, gate.bypass_token()
        base = self._user(user_id)
        epoch = gate.epoch.current
        values = await self._mget([f"{base}:{epoch}:{kind}", f"{base}:v"])
        if values is None:
            self._on_lookup(cache_name, "error")
            return None, gate.bypass_token()
        payload = codec.untag(values[0], values[1])
        if payload is None:
            self._on_lookup(cache_name, "miss")
        return payload, codec.make_token(epoch, values[1])


class RedisProductCache(_RedisCache):
    """Product existence ("exists" only, see ``catalog.CachedCatalog``)."""

    def _product(self, product_id: UUID) -> str:
        return f"{self._prefix}:{{p:{product_id}}}"

    async def known(self, product_ids: Sequence[UUID]) -> tuple[set[UUID], dict[UUID, int]]:
        """(ids cached as existing, a version token for each of the others)."""
        gate = self._gate
        ids = list(dict.fromkeys(product_ids))
        values = None
        epoch = gate.epoch.current
        if gate.usable:
            keys: list[str] = []
            for product_id in ids:
                base = self._product(product_id)
                keys += [f"{base}:{epoch}:e", f"{base}:v"]
            values = await self._mget(keys)
        if values is None:
            for _ in ids:
                self._on_lookup(policy.PRODUCT_EXISTS, "error")
            return set(), {product_id: gate.bypass_token() for product_id in ids}
        hits: set[UUID] = set()
        tokens: dict[UUID, int] = {}
        for i, product_id in enumerate(ids):
            entry, version = values[2 * i], values[2 * i + 1]
            if codec.untag(entry, version) is not None:
                hits.add(product_id)
                self._on_lookup(policy.PRODUCT_EXISTS, "hit")
            else:
                tokens[product_id] = codec.make_token(epoch, version)
                self._on_lookup(policy.PRODUCT_EXISTS, "miss")
        return hits, tokens

    async def remember(self, found: Iterable[tuple[UUID, int]]) -> None:
        for product_id, token in found:
            await self._store(self._product(product_id), "e", token, b"1", policy.PRODUCT_TTL,
                              policy.PRODUCT_VERSION_TTL)

    async def forget(self, product_id: UUID) -> None:
        await self._bump_version(f"{self._product(product_id)}:v", policy.PRODUCT_VERSION_TTL)
