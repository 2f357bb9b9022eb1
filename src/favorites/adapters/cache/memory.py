"""The caches in this process: the embedded default (SQLite, one worker, no Redis).

Same semantics as the Redis caches: version tokens taken before a load, stores refused when the
key was invalidated since, TTLs jittered, memory bounded (least recently used entries go first).
Nothing can be lost between a write and its invalidation here, so there is no epoch.

Only correct when this process sees every write: ``setup.build_caches`` uses it with one worker on
SQLite only (several workers, or several instances on one PostgreSQL, could not see each other's
invalidations and would serve each other stale lists).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar
from uuid import UUID

from favorites.adapters.cache import policy
from favorites.adapters.cache.observer import LookupObserver, ignore_lookup
from favorites.domain.pages import FirstPage

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


class Versions(Generic[K]):
    """Per-key version tokens from one increasing counter, in bounded memory.

    ``token(k)`` is the counter value of k's last invalidation, or ``floor`` for keys without one.
    Forgetting the oldest invalidations raises ``floor`` to the highest value forgotten, so a token
    can change when it need not (a store refused, harmless) but never returns to an earlier value:
    a load that overlapped an invalidation is never stored.
    """

    def __init__(self, max_keys: int):
        self._max = max_keys
        self._counter = 0
        self._floor = 0
        self._marks: OrderedDict[K, int] = OrderedDict()

    def token(self, key: K) -> int:
        return self._marks.get(key, self._floor)

    def bump(self, key: K) -> None:
        self._counter += 1
        self._marks[key] = self._counter
        self._marks.move_to_end(key)
        while len(self._marks) > self._max:
            _, forgotten = self._marks.popitem(last=False)
            self._floor = max(self._floor, forgotten)


class Entries(Generic[K, V]):
    """A bounded LRU map whose entries expire."""

    def __init__(self, max_entries: int, clock: Clock):
        self._max = max_entries
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        found = self._data.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return found[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        self._data[key] = (self._clock() + policy.jittered(ttl), value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)


class InProcessFavoritesCache:
    """Implements the ``FavoritesCache`` port. A full page (51 favorites) is ~5 KiB of rendered
    JSON, so the default bound (5,000 pages) keeps it around 25 MiB."""

    keeps_pages = True

    def __init__(self, *, max_pages: int = 5_000, max_counts: int = 50_000,
                 clock: Clock = time.monotonic, on_lookup: LookupObserver = ignore_lookup):
        self._versions: Versions[UUID] = Versions(max(max_pages, max_counts) * 2)
        self._pages: Entries[UUID, FirstPage] = Entries(max_pages, clock)
        self._counts: Entries[UUID, int] = Entries(max_counts, clock)
        self._on_lookup = on_lookup

    async def lookup_first_page(self, user_id: UUID) -> tuple[FirstPage | None, int]:
        page = self._pages.get(user_id)
        self._on_lookup(policy.FAVORITES_PAGE, "miss" if page is None else "hit")
        return page, self._versions.token(user_id)

    async def set_first_page(self, user_id: UUID, page: FirstPage, version: int) -> None:
        if version == self._versions.token(user_id):
            self._pages.put(user_id, page, policy.PAGE_TTL)

    async def get_count(self, user_id: UUID) -> int | None:
        count = self._counts.get(user_id)
        self._on_lookup(policy.FAVORITES_COUNT, "miss" if count is None else "hit")
        return count

    async def set_count(self, user_id: UUID, count: int, version: int) -> None:
        if version == self._versions.token(user_id):
            self._counts.put(user_id, count, policy.COUNT_TTL)

    async def version(self, user_id: UUID) -> int:
        return self._versions.token(user_id)

    async def invalidate_user(self, user_id: UUID) -> None:
        self._versions.bump(user_id)
        self._pages.pop(user_id)
        self._counts.pop(user_id)

    async def purge_user(self, user_id: UUID) -> None:
        await self.invalidate_user(user_id)  # which drops the entries already


class InProcessProductCache:
    """Product existence ("exists" only, see ``catalog.CachedCatalog``)."""

    def __init__(self, *, max_products: int = 100_000, clock: Clock = time.monotonic,
                 on_lookup: LookupObserver = ignore_lookup):
        self._versions: Versions[UUID] = Versions(max_products)
        self._exists: Entries[UUID, bool] = Entries(max_products, clock)
        self._on_lookup = on_lookup

    async def known(self, product_ids: Sequence[UUID]) -> tuple[set[UUID], dict[UUID, int]]:
        hits: set[UUID] = set()
        tokens: dict[UUID, int] = {}
        for product_id in dict.fromkeys(product_ids):
            if self._exists.get(product_id):
                hits.add(product_id)
                self._on_lookup(policy.PRODUCT_EXISTS, "hit")
            else:
                tokens[product_id] = self._versions.token(product_id)
                self._on_lookup(policy.PRODUCT_EXISTS, "miss")
        return hits, tokens

    async def remember(self, found: Iterable[tuple[UUID, int]]) -> None:
        for product_id, token in found:
            if token == self._versions.token(product_id):
                self._exists.put(product_id, True, policy.PRODUCT_TTL)

    async def forget(self, product_id: UUID) -> None:
        self._versions.bump(product_id)
        self._exists.pop(product_id)
