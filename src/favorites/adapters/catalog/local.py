"""The local product table as the catalog (no external product service configured)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from favorites.service_layer.ports import UnitOfWorkFactory


class LocalCatalog:
    #: The table is on the favorites store's primary: adds check it themselves.
    in_store = True

    def __init__(self, uow: UnitOfWorkFactory):
        self._uow = uow

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        async with self._uow(readonly=True) as uow:
            return await uow.products.existing(product_ids)

    async def forget(self, product_id: UUID) -> None:
        """Nothing cached here; the table is the truth."""
