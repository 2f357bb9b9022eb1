"""Favorites use cases: the business rules, the audit trail and cache invalidation in one place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from favorites.domain import access
from favorites.domain.cursor import CursorCodec
from favorites.domain.errors import (
    FavoriteNotFound,
    FavoritesLimitReached,
    FeatureNotEnabled,
    InvalidToken,
    ProductNotFound,
    ValidationFailed,
)
from favorites.domain.flags import DEFAULTS, ENABLE_FAVORITES_V2
from favorites.domain.models import AddOutcome, AuditAction, AuditEntry, Favorite, Principal
from favorites.domain.pages import FirstPage, Page
from favorites.service_layer.ports import (
    Catalog,
    Clock,
    FavoritesCache,
    FeatureFlags,
    UnitOfWork,
    UnitOfWorkFactory,
)
from favorites.service_layer.singleflight import SingleFlight
from favorites.tasks import runs_to_completion

log = logging.getLogger("favorites.favorites")

#: How far instances' clocks may differ: a product deletion stamped this long before an add's
#: check still counts as racing it (``_purged_if_deleted_meanwhile``).
DELETION_CLOCK_SKEW = timedelta(seconds=5)

MAX_PAGE = 50
MAX_CONTAINS = 100
#: Ids in one bulk change (adds and removes together). The 1 KB body limit holds about 25 UUIDs.
MAX_BULK = 25
#: Rows per query when exporting: a full list (10,000 by default) is ten keyset pages.
EXPORT_BATCH = 1000
#: Next-page cursors of cached first pages kept built (see ``_first_page_cursor``).
FIRST_PAGE_CURSORS = 4096


class _Defaults:
    """Every flag at its default: the service without a flag provider (unit tests, tools)."""

    def enabled(self, flag: str, user_id: UUID) -> bool:
        return DEFAULTS[flag]


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk change did: only the ids whose state it changed."""

    added: list[UUID]
    removed: list[UUID]


def _ensure_known(product_ids: Sequence[UUID], known: set[UUID]) -> None:
    unknown = [pid for pid in product_ids if pid not in known]
    if unknown:
        raise ProductNotFound(f"products do not exist: {', '.join(map(str, unknown))}")


class FavoritesService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        catalog: Catalog,
        cache: FavoritesCache,
        cursors: CursorCodec,
        clock: Clock,
        max_per_user: int,
        flags: FeatureFlags | None = None,
    ):
        self._uow = uow
        self._flags: FeatureFlags = flags or _Defaults()
        self._catalog = catalog
        self._cache = cache
        self._cursors = cursors
        self._clock = clock
        self._max_per_user = max_per_user
        # Concurrent cache misses of one user's first page / count share one database load.
        # Keyed by the cache's version token: a read that starts after a write's invalidation
        # never joins a load that started before it.
        self._page_loads: SingleFlight[tuple[UUID, int], FirstPage] = SingleFlight()
        self._count_loads: SingleFlight[tuple[UUID, int], int] = SingleFlight()
        #: user id's bytes + the JSON of a first page's last listed favorite -> the cursor after
        #: it. Bytes and strings only: nothing here for the garbage collector to walk.
        self._first_cursors: dict[bytes, str] = {}

    @runs_to_completion
    async def add(
        self, principal: Principal, user_id: UUID, product_id: UUID, request_id: str | None = None
    ) -> tuple[Favorite, bool]:
        """Idempotent: returns the favorite and whether this call created it."""
        access.ensure_can_write(principal, user_id)
        # A local catalog is checked by the add itself, in the same round trip.
        in_store = self._catalog.in_store
        if not in_store and product_id not in await self._catalog.existing([product_id]):
            raise ProductNotFound(f"product {product_id} does not exist")
        now = self._clock.now()
        entry = AuditEntry(AuditAction.FAVORITE_ADDED, principal.subject, principal.actor_type,
                           str(user_id), product_id, request_id)
        # user_id marks this user as a recent writer: their next reads see this write.
        async with self._invalidating(user_id) as uow:
            outcome, favorite = await uow.favorites.add(
                Favorite(user_id, product_id, now), self._max_per_user, entry,
                require_product=in_store, token_id=principal.token_id)
            if outcome is AddOutcome.REVOKED:
                raise InvalidToken("token revoked")
            if outcome is AddOutcome.NO_PRODUCT:
                raise ProductNotFound(f"product {product_id} does not exist")
            if outcome is AddOutcome.FULL:
                raise FavoritesLimitReached(
                    f"a user may hold at most {self._max_per_user} favorites"
                )
            if outcome is AddOutcome.EXISTS:
                return favorite, False
            await uow.commit()
        if not in_store:
            await self._purged_if_deleted_meanwhile(user_id, [product_id], now)
        return favorite, True

    async def _purged_if_deleted_meanwhile(self, user_id: UUID, added: Sequence[UUID],
                                           checked_at: datetime) -> None:
        """An external catalog's product may be deleted between the product service's answer
        and the add's commit; the deletion's purge then ran before the new row was committed,
        never saw it, and the favorite of a deleted product would stay until an instance next
        resumed purges. A deletion marks the product before it purges, so a mark seen after
        the commit is the only case left: the favorite is removed as the purge would have.
        The add still answers as made: it came just before the deletion, as far as anyone can
        tell. With a local catalog the add holds the product's row instead (FOR SHARE).

        Only a deletion stamped after the product service answered counts (less the clocks'
        skew between instances): one it answered "exists" for well after the deletion has
        brought the product back, and its favorites are kept as before."""
        since = checked_at - DELETION_CLOCK_SKEW
        async with self._uow(readonly=True, user_id=user_id) as uow:  # the primary: just wrote
            deleted = await uow.products.deleted_since(added, since)
        if not deleted:
            return
        async with self._invalidating(user_id) as uow:
            await uow.favorites.delete_many(user_id, sorted(deleted))
            await uow.commit()
        for product_id in sorted(deleted):
            log.info("a favorite added as its product was deleted was purged",
                     extra={"userId": str(user_id), "productId": str(product_id)})

    @contextlib.asynccontextmanager
    async def _invalidating(self, user_id: UUID) -> AsyncIterator[UnitOfWork]:
        """A writing unit of work for ``user_id`` whose end invalidates the user's cache entries
        whatever the outcome: the changes committed, nothing to change, or an error.

        An error may come after the server committed (a connection lost while the reply was on
        its way): the write is then done, and its invalidation must not be skipped. The client's
        retry finds nothing left to change (the favorite exists, or is gone already), and by
        then invalidating only when something changed would leave the entry stale for its whole
        TTL. An invalidation costs one cache write; a refusal (revoked token, unknown product,
        the cap) pays it too, which is rare enough not to matter.
        """
        try:
            async with self._uow(user_id=user_id) as uow:
                yield uow
        finally:
            await self._cache.invalidate_user(user_id)

    @runs_to_completion
    async def bulk(
        self, principal: Principal, user_id: UUID, add: Sequence[UUID], remove: Sequence[UUID],
        request_id: str | None = None,
    ) -> BulkResult:
        """All or nothing, in one transaction: a grid's "save all" or "clear these" is one
        request and one audit row per change, and either every add is valid or none is made."""
        access.ensure_can_write(principal, user_id)
        self._ensure_v2(user_id)
        adds, removes = list(dict.fromkeys(add)), list(dict.fromkeys(remove))
        if not adds and not removes:
            raise ValidationFailed("name at least one product to add or remove")
        if len(adds) + len(removes) > MAX_BULK:
            raise ValidationFailed(f"at most {MAX_BULK} products per request")
        if both := set(adds) & set(removes):
            raise ValidationFailed(f"product {min(both)} is both added and removed")
        in_store = self._catalog.in_store
        if adds and not in_store:
            _ensure_known(adds, await self._catalog.existing(adds))  # one batch lookup
        now = self._clock.now()
        async with self._invalidating(user_id) as uow:
            if adds and in_store:
                # Held until the commit: a deletion of one of them waits, and its purge then
                # sees these favorites (as for a single add, in favorites_add()).
                _ensure_known(adds, await uow.products.existing(adds, for_share=True))
            await uow.favorites.lock_user(user_id)
            if adds and principal.token_id is not None and await uow.revoked_tokens.is_revoked(
                    principal.token_id):  # under the user's lock, as for a single add
                raise InvalidToken("token revoked")
            inserted = await uow.favorites.insert_many(user_id, adds, now)
            deleted = await uow.favorites.delete_many(user_id, removes)
            # In the order asked, not the database's.
            result = BulkResult([p for p in adds if p in inserted],
                                [p for p in removes if p in deleted])
            if result.added and await uow.favorites.count_for_user(user_id) > self._max_per_user:
                raise FavoritesLimitReached(
                    f"a user may hold at most {self._max_per_user} favorites"
                )
            await uow.audit.record_many([
                AuditEntry(action, principal.subject, principal.actor_type, str(user_id),
                           product_id, request_id)
                for action, changed in ((AuditAction.FAVORITE_ADDED, result.added),
                                        (AuditAction.FAVORITE_REMOVED, result.removed))
                for product_id in changed
            ], now)
            await uow.commit()
        if result.added and not in_store:
            await self._purged_if_deleted_meanwhile(user_id, result.added, now)
        return result

    async def export(self, principal: Principal, user_id: UUID) -> list[Favorite]:
        """Every favorite of the owner, newest first (GDPR access and portability). Keyset pages
        keep each query small and list each favorite once, in order; a change the user makes
        while the export runs may or may not be in it. Routed like every read: a user who just
        wrote reads from the primary."""
        access.ensure_owner(principal, user_id)
        self._ensure_v2(user_id)
        items: list[Favorite] = []
        async with self._uow(readonly=True, user_id=user_id) as uow:
            after = None
            while True:
                page = await uow.favorites.page(user_id, EXPORT_BATCH, after)
                items.extend(page)
                if len(page) < EXPORT_BATCH:
                    return items
                after = (page[-1].created_at, page[-1].product_id)

    def _ensure_v2(self, user_id: UUID) -> None:
        if not self._flags.enabled(ENABLE_FAVORITES_V2, user_id):
            raise FeatureNotEnabled("this endpoint is not enabled for this user yet")

    @runs_to_completion
    async def remove(
        self, principal: Principal, user_id: UUID, product_id: UUID, request_id: str | None = None
    ) -> bool:
        """Idempotent: True when a favorite was removed, False when there was none."""
        access.ensure_can_write(principal, user_id)
        entry = AuditEntry(AuditAction.FAVORITE_REMOVED, principal.subject, principal.actor_type,
                           str(user_id), product_id, request_id)
        async with self._invalidating(user_id) as uow:
            removed = await uow.favorites.remove(user_id, product_id, entry, self._clock.now())
            await uow.commit()
        return removed

    async def list_page(
        self,
        principal: Principal,
        user_id: UUID,
        limit: int = MAX_PAGE,
        cursor: str | None = None,
        request_id: str | None = None,
    ) -> Page:
        audited = access.ensure_can_read(principal, user_id)
        after = self._cursors.decode(user_id, cursor) if cursor else None
        if audited:
            await self._audit_admin_read(principal, user_id, request_id)
        if after is not None:
            async with self._uow(readonly=True, user_id=user_id) as uow:
                items = await uow.favorites.page(user_id, limit + 1, after)
            if len(items) > limit:
                return Page(items[:limit], self._cursor_after(items[limit - 1]))
            return Page(items, None)
        first = await self._first_page(user_id)
        cursor = self._first_page_cursor(first, limit) if len(first) > limit else None
        return Page.from_first(first, limit, cursor)

    def _first_page_cursor(self, first: FirstPage, limit: int) -> str:
        """The cursor after a cached first page's ``limit``-th favorite, built once.

        Once a user holds more than a page, every read of their first page answers with the same
        next cursor until the page changes; decoding the favorite and signing its position again
        was about a tenth of such a read's instructions. The cursor depends on the user and that
        favorite alone (its product and time, to the microsecond), which its JSON names exactly:
        those are the key, and a page that changed looks up the favorite it now ends with.
        """
        key = first.user_id.bytes + first.item(limit - 1)
        cursor = self._first_cursors.get(key)
        if cursor is None:
            cursor = self._cursor_after(first.favorite_at(limit - 1))
            if len(self._first_cursors) >= FIRST_PAGE_CURSORS:
                self._first_cursors.clear()  # cheap bound; the next reads build them again
            self._first_cursors[key] = cursor
        return cursor

    async def _first_page(self, user_id: UUID) -> FirstPage:
        """The user's first page from the cache; on a miss loaded once, however many ask."""
        first, version = await self._cache.lookup_first_page(user_id)
        if first is None:
            first = await self._page_loads.run(
                (user_id, version), lambda: self._load_first_page(user_id, version)
            )
        return first

    def _cursor_after(self, last: Favorite) -> str:
        return self._cursors.encode(last.user_id, last.created_at, last.product_id)

    async def get(
        self, principal: Principal, user_id: UUID, product_id: UUID, request_id: str | None = None
    ) -> Favorite:
        audited = access.ensure_can_read(principal, user_id)
        if audited:
            await self._audit_admin_read(principal, user_id, request_id)
        async with self._uow(readonly=True, user_id=user_id) as uow:
            favorite = await uow.favorites.get(user_id, product_id)
        if favorite is None:
            raise FavoriteNotFound(f"product {product_id} is not among the favorites")
        return favorite

    async def count(
        self, principal: Principal, user_id: UUID, request_id: str | None = None
    ) -> int:
        audited = access.ensure_can_read(principal, user_id)
        if audited:
            await self._audit_admin_read(principal, user_id, request_id)
        cached = await self._cache.get_count(user_id)
        if cached is not None:
            return cached
        version = await self._cache.version(user_id)
        return await self._count_loads.run(
            (user_id, version), lambda: self._load_count(user_id, version)
        )

    async def _load_first_page(self, user_id: UUID, version: int) -> FirstPage:
        """The full first page (the cache serves any ``limit`` from it), stored under ``version``
        (taken before the load, so a write committed meanwhile makes the store a no-op)."""
        async with self._uow(readonly=True, user_id=user_id) as uow:
            first = await uow.favorites.first_page(user_id, MAX_PAGE + 1)
        await self._cache.set_first_page(user_id, first, version)
        return first

    async def _load_count(self, user_id: UUID, version: int) -> int:
        async with self._uow(readonly=True, user_id=user_id) as uow:
            count = await uow.favorites.count_for_user(user_id)
        await self._cache.set_count(user_id, count, version)
        return count

    async def contains(
        self, principal: Principal, user_id: UUID, product_ids: Sequence[UUID]
    ) -> list[UUID]:
        """The subset of ``product_ids`` the user favorited, in the order asked."""
        access.ensure_owner(principal, user_id)
        if not product_ids:
            return []
        # Hearts on a product grid ask this on every page view. The first page is loaded one
        # longer than a page, so when it is not longer it holds every favorite of the user and
        # answers from the cache, as current as a list (the same versioned entry).
        if self._cache.keeps_pages:
            first = await self._first_page(user_id)
            if len(first) <= MAX_PAGE:
                return [pid for pid in dict.fromkeys(product_ids) if first.includes(pid)]
        async with self._uow(readonly=True, user_id=user_id) as uow:
            found = await uow.favorites.contains(user_id, product_ids)
        return [pid for pid in dict.fromkeys(product_ids) if pid in found]

    async def count_for_product(self, principal: Principal, product_id: UUID) -> int:
        access.ensure_user(principal)
        async with self._uow(readonly=True) as uow:
            return await uow.favorites.count_for_product(product_id)

    async def _audit_admin_read(
        self, principal: Principal, user_id: UUID, request_id: str | None
    ) -> None:
        # Written before the data is returned: a read we could not audit is not served.
        async with self._uow() as uow:
            # Under the user's lock, which an erasure holds until it commits: otherwise this row,
            # not yet committed, is invisible to the erasure's pseudonymisation and would be
            # committed after it with the erased user's id in it.
            await uow.favorites.lock_user(user_id)
            await uow.audit.record(
                AuditEntry(AuditAction.FAVORITES_VIEWED_BY_ADMIN, principal.subject,
                           principal.actor_type, str(user_id), None, request_id),
                self._clock.now(),
            )
            await uow.commit()
