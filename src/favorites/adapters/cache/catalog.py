"""``CachedCatalog``: product existence cached around the product service.

Only the product service is wrapped (``Caches.wrap_catalog``): with the local table as the
catalog, every add checks the table in its own statement (``Catalog.in_store``), so nothing would
read a cached answer.

Only "exists" is cached (1 h): that is the answer that matters for adds, and the one that keeps
adds of known products working while the product service is down. "Unknown" is not cached:

- a product can start to exist without us being told (the product service creates products on
  its own), so a cached "unknown" would refuse adds of a real product for as long as it lived;
- unknown ids are rare in real traffic (clients favorite products they display), and a client
  that sends many is bounded by the per-user rate limit; each costs one lookup.

A deletion calls ``forget`` (a version bump: a lookup that overlapped the deletion is never
stored); concurrent misses of one product share one lookup (``SingleFlight``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol
from uuid import UUID

from favorites.service_layer.ports import Catalog
from favorites.service_layer.singleflight import SingleFlight


class ProductExistenceCache(Protocol):
    async def known(self, product_ids: Sequence[UUID]) -> tuple[set[UUID], dict[UUID, int]]:
        """(ids cached as existing, a version token for each of the others)."""

    async def remember(self, found: Iterable[tuple[UUID, int]]) -> None:
        """Cache "exists" for each id, unless it was forgotten since its token was taken."""

    async def forget(self, product_id: UUID) -> None: ...


class CachedCatalog:
    def __init__(self, inner: Catalog, cache: ProductExistenceCache):
        self.inner = inner
        self.in_store = inner.in_store
        self._cache = cache
        self._lookups: SingleFlight[tuple[UUID, int], set[UUID]] = SingleFlight()

    def __repr__(self) -> str:
        return f"CachedCatalog({self.inner!r})"

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        """Raises what the inner catalog raises (DependencyUnavailable) for ids not cached."""
        hits, tokens = await self._cache.known(product_ids)
        if not tokens:
            return hits
        if len(tokens) == 1:
            ((product_id, token),) = tokens.items()
            found = await self._lookups.run((product_id, token),
                                            lambda: self._load({product_id: token}))
        else:
            found = await self._load(tokens)
        return hits | found

    async def _load(self, tokens: dict[UUID, int]) -> set[UUID]:
        found = await self.inner.existing(list(tokens))
        await self._cache.remember((product_id, tokens[product_id]) for product_id in found)
        return found

    async def forget(self, product_id: UUID) -> None:
        await self._cache.forget(product_id)
        await self.inner.forget(product_id)
