"""The local product catalog, used when no external product service is configured."""

from __future__ import annotations

from uuid import UUID

from favorites.domain import access
from favorites.domain.errors import CatalogIsExternal
from favorites.domain.models import AuditAction, AuditEntry, Principal
from favorites.service_layer.ports import Catalog, Clock, FavoritesCache, UnitOfWorkFactory
from favorites.tasks import runs_to_completion

#: Favorites of a deleted product are removed in batches this large so no transaction holds
#: locks on a popular product's rows for long.
DELETE_BATCH = 1000
#: Unfinished purges looked up at a time at start-up (``resume_purges``).
RESUME_BATCH = 100


class ProductsService:
    def __init__(
        self, uow: UnitOfWorkFactory, catalog: Catalog, cache: FavoritesCache, clock: Clock,
        *, catalog_is_local: bool = True,
    ):
        """``catalog_is_local=False`` when an external product service is the catalog: products
        are then registered there, not here; deletions are still accepted (see ``delete``)."""
        self._uow = uow
        self._catalog = catalog
        self._cache = cache
        self._clock = clock
        self._catalog_is_local = catalog_is_local

    @runs_to_completion
    async def register(self, principal: Principal | None, product_id: UUID) -> bool:
        """True when the product is new (or deleted before and now back)."""
        if principal is not None:
            access.ensure_scope(principal, "products:write")
        self._ensure_local_catalog()
        async with self._uow() as uow:
            created = await uow.products.upsert(product_id)
            await uow.commit()
        await self._catalog.forget(product_id)
        return created

    async def register_many(self, product_ids: list[UUID]) -> int:
        """For the CLI import: one transaction per call, returns how many were new."""
        self._ensure_local_catalog()
        created = 0
        async with self._uow() as uow:
            for product_id in product_ids:
                created += await uow.products.upsert(product_id)
            await uow.commit()
        return created

    @runs_to_completion
    async def delete(
        self, principal: Principal, product_id: UUID, request_id: str | None = None
    ) -> None:
        """Mark deleted and forget it everywhere; ``purge_favorites`` then runs in the background.

        Marking first means no new favorite of it can be added while the purge runs. With an
        external product service this is how it tells us a product is gone: the local mark is
        unused, but the cached existence is forgotten and the favorites are purged all the same.
        """
        access.ensure_scope(principal, "products:write")
        now = self._clock.now()
        async with self._uow() as uow:
            await uow.products.mark_deleted(product_id, now)
            await uow.audit.record(
                AuditEntry(AuditAction.PRODUCT_DELETED, principal.subject, principal.actor_type,
                           None, product_id, request_id),
                now,
            )
            await uow.commit()
        await self._catalog.forget(product_id)

    def _ensure_local_catalog(self) -> None:
        if not self._catalog_is_local:
            raise CatalogIsExternal(
                "products are registered in the product service (FAVORITES_PRODUCT_SERVICE_URL)"
            )

    async def resume_purges(self) -> int:
        """Finish the purges a process did not: it stopped (a deploy, a crash) while one ran,
        or a batch failed. Run at start-up, so a deleted product's favorites never stay in lists,
        counts and hearts for good. Several instances starting at once purge the same products
        side by side, which is only the same deletes done twice."""
        removed = 0
        while True:
            async with self._uow() as uow:  # the primary: a replica may lag behind a purge
                pending = await uow.products.deleted_with_favorites(RESUME_BATCH)
            for product_id in pending:
                removed += await self.purge_favorites(product_id)
            if len(pending) < RESUME_BATCH:
                return removed

    async def purge_favorites(self, product_id: UUID) -> int:
        removed_total = 0
        while True:
            async with self._uow() as uow:
                users = await uow.favorites.delete_batch_for_product(product_id, DELETE_BATCH)
                uow.wrote_for(users)  # a lagging replica must not show them the product still
                await uow.commit()
            for user_id in users:
                await self._cache.invalidate_user(user_id)
            removed_total += len(users)
            if len(users) < DELETE_BATCH:
                return removed_total
