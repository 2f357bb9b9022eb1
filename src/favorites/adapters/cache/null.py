"""A cache that remembers nothing: correct by construction, used where no cache is configured."""

from __future__ import annotations

import itertools
from uuid import UUID

from favorites.domain.pages import FirstPage


class NullFavoritesCache:
    keeps_pages = False

    def __init__(self) -> None:
        self._tokens = itertools.count(1)

    async def lookup_first_page(self, user_id: UUID) -> tuple[FirstPage | None, int]:
        return None, await self.version(user_id)

    async def set_first_page(self, user_id: UUID, page: FirstPage, version: int) -> None:
        return None

    async def get_count(self, user_id: UUID) -> int | None:
        return None

    async def set_count(self, user_id: UUID, count: int, version: int) -> None:
        return None

    async def version(self, user_id: UUID) -> int:
        # A new token per call: with nothing to tell a write happened, no two loads may be
        # collapsed into one (a read after a write could otherwise get a load begun before it).
        return -next(self._tokens)

    async def invalidate_user(self, user_id: UUID) -> None:
        return None

    async def purge_user(self, user_id: UUID) -> None:
        return None
