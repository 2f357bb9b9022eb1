"""In-memory fakes of the ports: the service layer's rules tested without sockets.

They keep transactional semantics (changes become visible on commit only), so rollback behaviour
is exercised too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self
from uuid import UUID

from favorites.adapters.cache.null import NullFavoritesCache
from favorites.domain.models import AddOutcome, AuditEntry, Favorite
from favorites.domain.pages import FirstPage
from favorites.service_layer.ports import RefreshTokenRecord


@dataclass
class State:
    favorites: dict[tuple[UUID, UUID], Favorite] = field(default_factory=dict)
    products: dict[UUID, datetime | None] = field(default_factory=dict)
    audit: list[tuple[AuditEntry, datetime]] = field(default_factory=list)
    refresh: dict[UUID, RefreshTokenRecord] = field(default_factory=dict)
    revoked: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)


class FakeFavorites:
    def __init__(self, state: State):
        self.s = state

    async def lock_user(self, user_id: UUID) -> None:
        return None

    async def insert(self, favorite: Favorite) -> bool:
        key = (favorite.user_id, favorite.product_id)
        if key in self.s.favorites:
            return False
        self.s.favorites[key] = favorite
        return True

    async def insert_many(self, user_id: UUID, product_ids: Sequence[UUID],
                          at: datetime) -> set[UUID]:
        return {p for p in product_ids if await self.insert(Favorite(user_id, p, at))}

    async def delete_many(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        return {p for p in product_ids if await self.delete(user_id, p)}

    async def get(self, user_id: UUID, product_id: UUID) -> Favorite | None:
        return self.s.favorites.get((user_id, product_id))

    async def delete(self, user_id: UUID, product_id: UUID) -> bool:
        return self.s.favorites.pop((user_id, product_id), None) is not None

    async def add(self, favorite: Favorite, limit: int, audit: AuditEntry, *,
                  require_product: bool = False,
                  token_id: str | None = None) -> tuple[AddOutcome, Favorite]:
        if require_product and self.s.products.get(favorite.product_id, 1) is not None:
            return AddOutcome.NO_PRODUCT, favorite
        if token_id is not None and token_id in self.s.revoked:
            return AddOutcome.REVOKED, favorite
        existing = await self.get(favorite.user_id, favorite.product_id)
        if existing is not None:
            return AddOutcome.EXISTS, existing
        if await self.count_for_user(favorite.user_id) >= limit:
            return AddOutcome.FULL, favorite
        await self.insert(favorite)
        self.s.audit.append((audit, favorite.created_at))
        return AddOutcome.CREATED, favorite

    async def remove(self, user_id: UUID, product_id: UUID, audit: AuditEntry,
                     at: datetime) -> bool:
        removed = await self.delete(user_id, product_id)
        if removed:
            self.s.audit.append((audit, at))
        return removed

    async def page(
        self, user_id: UUID, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Favorite]:
        rows = sorted((f for f in self.s.favorites.values() if f.user_id == user_id),
                      key=lambda f: (-f.created_at.timestamp(), f.product_id))
        if after is not None:
            at, product = after
            rows = [f for f in rows if f.created_at < at or
                    (f.created_at == at and f.product_id > product)]
        return rows[:limit]

    async def first_page(self, user_id: UUID, limit: int) -> FirstPage:
        return FirstPage.of(user_id, await self.page(user_id, limit, None))

    async def count_for_user(self, user_id: UUID) -> int:
        return sum(1 for u, _ in self.s.favorites if u == user_id)

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        return {p for p in product_ids if (user_id, p) in self.s.favorites}

    async def count_for_product(self, product_id: UUID) -> int:
        return sum(1 for _, p in self.s.favorites if p == product_id)

    async def delete_all_for_user(self, user_id: UUID) -> int:
        keys = [k for k in self.s.favorites if k[0] == user_id]
        for k in keys:
            del self.s.favorites[k]
        return len(keys)

    async def delete_batch_for_product(self, product_id: UUID, batch_size: int) -> list[UUID]:
        if self.s.products.get(product_id) is None:  # live (or unknown): registered again
            return []
        keys = [k for k in self.s.favorites if k[1] == product_id][:batch_size]
        for k in keys:
            del self.s.favorites[k]
        return [k[0] for k in keys]


class FakeProducts:
    def __init__(self, state: State):
        self.s = state

    async def upsert(self, product_id: UUID) -> bool:
        was_active = product_id in self.s.products and self.s.products[product_id] is None
        self.s.products[product_id] = None
        return not was_active

    async def mark_deleted(self, product_id: UUID, at: datetime) -> bool:
        self.s.products[product_id] = self.s.products.get(product_id) or at
        return True

    async def existing(self, product_ids: Sequence[UUID], *,
                       for_share: bool = False) -> set[UUID]:
        return {p for p in product_ids if p in self.s.products and self.s.products[p] is None}

    async def deleted_with_favorites(self, limit: int) -> list[UUID]:
        named = {product for _, product in self.s.favorites}
        return [p for p, at in self.s.products.items() if at is not None and p in named][:limit]

    async def deleted_since(self, product_ids: Sequence[UUID], since: datetime) -> set[UUID]:
        return {p for p in product_ids
                if (at := self.s.products.get(p)) is not None and at >= since}


class FakeAudit:
    def __init__(self, state: State):
        self.s = state

    async def record(self, entry: AuditEntry, at: datetime) -> None:
        self.s.audit.append((entry, at))

    async def record_many(self, entries: Sequence[AuditEntry], at: datetime) -> None:
        self.s.audit.extend((entry, at) for entry in entries)

    async def pseudonymise_user(self, user_id: str, pseudonym: str) -> int:
        changed = 0
        for i, (entry, at) in enumerate(self.s.audit):
            if user_id in (entry.subject_user_id, entry.actor_id):
                self.s.audit[i] = (replace(
                    entry,
                    subject_user_id=pseudonym if entry.subject_user_id == user_id
                    else entry.subject_user_id,
                    actor_id=pseudonym if entry.actor_id == user_id else entry.actor_id,
                ), at)
                changed += 1
        return changed


class FakeRefreshTokens:
    def __init__(self, state: State):
        self.s = state

    async def insert(self, record: RefreshTokenRecord) -> None:
        self.s.refresh[record.token_id] = record

    async def lock_family(self, family_id: UUID) -> None:
        return None  # one unit of work at a time here

    async def get_by_hash(self, token_hash: str) -> RefreshTokenRecord | None:
        return next((r for r in self.s.refresh.values() if r.token_hash == token_hash), None)

    async def mark_used(self, token_id: UUID, at: datetime) -> bool:
        record = self.s.refresh[token_id]
        if record.used_at is not None or record.revoked_at is not None:
            return False
        self.s.refresh[token_id] = replace(record, used_at=at)
        return True

    async def revoke_family(self, family_id: UUID, at: datetime) -> int:
        n = 0
        for key, record in list(self.s.refresh.items()):
            if record.family_id == family_id and record.revoked_at is None:
                self.s.refresh[key] = replace(record, revoked_at=at)
                n += 1
        return n

    async def live_access_tokens(self, family_id: UUID, now: datetime
                                 ) -> list[tuple[str, datetime]]:
        return [(r.access_jti, r.access_expires_at) for r in self.s.refresh.values()
                if r.family_id == family_id and r.access_jti is not None
                and r.access_expires_at is not None and r.access_expires_at > now]

    async def live_access_tokens_of_user(self, user_id: UUID, now: datetime
                                         ) -> list[tuple[str, datetime]]:
        return [(r.access_jti, r.access_expires_at) for r in self.s.refresh.values()
                if r.user_id == user_id and r.access_jti is not None
                and r.access_expires_at is not None and r.access_expires_at > now]

    async def delete_for_user(self, user_id: UUID) -> int:
        keys = [k for k, r in self.s.refresh.items() if r.user_id == user_id]
        for k in keys:
            del self.s.refresh[k]
        return len(keys)


class FakeRevoked:
    def __init__(self, state: State):
        self.s = state

    async def add(self, jti: str, expires_at: datetime, at: datetime) -> None:
        self.s.revoked.setdefault(jti, (at, expires_at))

    async def is_revoked(self, jti: str) -> bool:
        return jti in self.s.revoked

    async def active_since(self, since: datetime, now: datetime
                           ) -> list[tuple[str, datetime, datetime]]:
        return [(j, exp, at) for j, (at, exp) in self.s.revoked.items()
                if at >= since and exp > now]


class FakeUnitOfWork:
    """Works on a copy of the committed state; ``commit`` publishes it."""

    def __init__(self, db: FakeDatabase):
        self._db = db

    async def __aenter__(self) -> Self:
        self._work = copy.deepcopy(self._db.state)
        self.favorites = FakeFavorites(self._work)
        self.products = FakeProducts(self._work)
        self.audit = FakeAudit(self._work)
        self.refresh_tokens = FakeRefreshTokens(self._work)
        self.revoked_tokens = FakeRevoked(self._work)
        return self

    async def commit(self) -> None:
        self._db.state = self._work
        self._db.commits += 1

    def wrote_for(self, user_ids: Iterable[UUID]) -> None:
        """No replicas here: nothing to route."""

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class FakeDatabase:
    def __init__(self) -> None:
        self.state = State()
        self.commits = 0
        self.readonly_calls: list[UUID | None] = []

    def __call__(self, *, readonly: bool = False, user_id: UUID | None = None) -> FakeUnitOfWork:
        if readonly:
            self.readonly_calls.append(user_id)
        return FakeUnitOfWork(self)


class FakeClock:
    def __init__(self, start: datetime | None = None):
        self.current = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        self.current += timedelta(microseconds=1)
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class FakeCatalog:
    """The fake store's products as the catalog; ``in_store=False`` acts as a product service
    would (asked before the add)."""

    def __init__(self, db: FakeDatabase, *, in_store: bool = True):
        self.in_store = in_store
        self._db = db
        self.forgotten: list[UUID] = []

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        return {p for p in product_ids if self._db.state.products.get(p, 1) is None}

    async def forget(self, product_id: UUID) -> None:
        self.forgotten.append(product_id)


class RecordingCache(NullFavoritesCache):
    """A null cache that records invalidations, to assert the service layer asks for them."""

    def __init__(self) -> None:
        super().__init__()
        self.invalidated: list[UUID] = []
        self.purged: list[UUID] = []

    async def invalidate_user(self, user_id: UUID) -> None:
        self.invalidated.append(user_id)

    async def purge_user(self, user_id: UUID) -> None:
        self.purged.append(user_id)
