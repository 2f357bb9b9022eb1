"""What the use cases need from the outside world. Adapters implement these; tests fake them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self
from uuid import UUID

from favorites.domain.models import AddOutcome, AuditEntry, Favorite
from favorites.domain.pages import FirstPage


class FavoritesRepository(Protocol):
    async def lock_user(self, user_id: UUID) -> None:
        """Serialise writers of one user's list (keeps the per-user cap exact)."""

    async def insert(self, favorite: Favorite) -> bool:
        """Insert unless present; True when a row was created."""

    async def insert_many(self, user_id: UUID, product_ids: Sequence[UUID],
                          at: datetime) -> set[UUID]:
        """Insert those not present, in one statement; returns the products inserted."""

    async def get(self, user_id: UUID, product_id: UUID) -> Favorite | None: ...

    async def delete(self, user_id: UUID, product_id: UUID) -> bool: ...

    async def add(self, favorite: Favorite, limit: int, audit: AuditEntry, *,
                  require_product: bool = False,
                  token_id: str | None = None) -> tuple[AddOutcome, Favorite]:
        """Add ``favorite`` and record ``audit`` unless the user has that product already (the
        favorite held is returned) or holds ``limit`` favorites; serialised per user. With
        ``require_product``, first NO_PRODUCT unless the product is in the local products table
        and not deleted (the catalog is that table: see ``Catalog.in_store``). With ``token_id``,
        REVOKED (nothing changed) when the database lists that access token as revoked, looked
        up under the user's lock: an instance's in-memory list may be a second behind an
        erasure, which holds the same lock.

        Atomic by itself: as a unit of work's only statement it commits on its own (PostgreSQL
        runs it as one statement, migration 0007); commit the unit anyway."""

    async def remove(self, user_id: UUID, product_id: UUID, audit: AuditEntry,
                     at: datetime) -> bool:
        """Delete the favorite and record ``audit`` if it was there; atomic by itself, like
        ``add``."""

    async def delete_many(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        """Delete those present, in one statement; returns the products deleted."""

    async def page(
        self, user_id: UUID, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Favorite]:
        """Newest first, ties broken by product id; ``after`` is the last item already seen."""

    async def first_page(self, user_id: UUID, limit: int) -> FirstPage:
        """``page(user_id, limit, None)`` as a ``FirstPage``, ready to cache and serve."""

    async def count_for_user(self, user_id: UUID) -> int: ...

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]: ...

    async def count_for_product(self, product_id: UUID) -> int: ...

    async def delete_all_for_user(self, user_id: UUID) -> int: ...

    async def delete_batch_for_product(self, product_id: UUID, batch_size: int) -> list[UUID]:
        """Remove up to ``batch_size`` favorites of a product; returns the users affected."""


class ProductsRepository(Protocol):
    async def upsert(self, product_id: UUID) -> bool:
        """Register (or revive) a product; True when it was not an active product before."""

    async def mark_deleted(self, product_id: UUID, at: datetime) -> bool: ...

    async def existing(self, product_ids: Sequence[UUID], *,
                       for_share: bool = False) -> set[UUID]:
        """The ids that exist and are not deleted. ``for_share``: in a writing unit of work,
        keep them so until it ends (a deletion waits for it), as an add of them needs."""

    async def deleted_with_favorites(self, limit: int) -> list[UUID]:
        """Products marked deleted that some favorite still names: purges left unfinished."""

    async def deleted_since(self, product_ids: Sequence[UUID], since: datetime) -> set[UUID]:
        """The ids marked deleted at ``since`` or later (an external catalog's products have a
        row only once deleted)."""


class AuditRepository(Protocol):
    async def record(self, entry: AuditEntry, at: datetime) -> None: ...

    async def record_many(self, entries: Sequence[AuditEntry], at: datetime) -> None: ...

    async def pseudonymise_user(self, user_id: str, pseudonym: str) -> int: ...


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    token_id: UUID
    family_id: UUID
    user_id: UUID
    roles: tuple[str, ...]
    token_hash: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    #: The access token issued with this one (``jti``, expiry), revoked with the family.
    access_jti: str | None = None
    access_expires_at: datetime | None = None


class RefreshTokenRepository(Protocol):
    async def insert(self, record: RefreshTokenRecord) -> None: ...

    async def get_by_hash(self, token_hash: str) -> RefreshTokenRecord | None: ...

    async def lock_family(self, family_id: UUID) -> None:
        """Until the unit of work ends, the family's other refreshes and logouts wait."""

    async def mark_used(self, token_id: UUID, at: datetime) -> bool:
        """Spend a token atomically; False when it was already spent or revoked."""

    async def revoke_family(self, family_id: UUID, at: datetime) -> int: ...

    async def live_access_tokens(self, family_id: UUID, expiring_after: datetime
                                 ) -> list[tuple[str, datetime]]:
        """(jti, expiry) of the access tokens the family issued that expire after
        ``expiring_after``: now minus the leeway a token is still accepted for past its expiry."""

    async def live_access_tokens_of_user(self, user_id: UUID, expiring_after: datetime
                                         ) -> list[tuple[str, datetime]]:
        """The same for every family of the user."""

    async def delete_for_user(self, user_id: UUID) -> int: ...


class RevokedTokenRepository(Protocol):
    async def add(self, jti: str, expires_at: datetime, at: datetime) -> None: ...

    async def is_revoked(self, jti: str) -> bool:
        """Asked of the database itself, in the unit of work: for writes that must not rely on
        an instance's in-memory list being up to date (see ``FavoritesRepository.add``)."""

    async def active_since(self, since: datetime, now: datetime
                           ) -> list[tuple[str, datetime, datetime]]:
        """(jti, expiry, revoked_at) of the revocations recorded at or after ``since`` (in the
        clock ``add`` stamps them with) that have not expired by ``now``."""


class Revocations(Protocol):
    """The revoked access tokens an instance refuses without asking the database."""

    def revoke_locally(self, jti: str, expires_at: int) -> None: ...


def revoke_locally(revocations: Revocations, revoked: list[tuple[str, datetime]]) -> None:
    """After the commit that recorded them: this instance refuses them at once, the others
    within a pull of the list."""
    for jti, expires_at in revoked:
        revocations.revoke_locally(jti, int(expires_at.timestamp()))


class UnitOfWork(Protocol):
    """One database transaction. Leaving the block without ``commit()`` rolls everything back."""

    @property
    def favorites(self) -> FavoritesRepository: ...

    @property
    def products(self) -> ProductsRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...

    @property
    def revoked_tokens(self) -> RevokedTokenRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...

    def wrote_for(self, user_ids: Iterable[UUID]) -> None:
        """Users whose favorites this write changes though it is not theirs (a product's purge):
        once it commits, their reads skip the replicas for a while too (read-your-writes)."""


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, readonly: bool = False, user_id: UUID | None = None) -> UnitOfWork:
        """``readonly`` reads may go to a replica unless ``user_id`` wrote moments ago."""


class Catalog(Protocol):
    """Which products exist: the local table or the external product service."""

    @property
    def in_store(self) -> bool:
        """True when the catalog is the favorites store's own products table: an add then checks
        the product in the statement that inserts it (``FavoritesRepository.add`` with
        ``require_product``) instead of asking here first, a unit of work of its own."""

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        """Raises DependencyUnavailable when it cannot tell."""

    async def forget(self, product_id: UUID) -> None:
        """Drop any cached knowledge of a product (it was deleted)."""


class FavoritesCache(Protocol):
    """Cache-aside for a user's first page and count. Every method is best effort."""

    #: Whether a stored page is there for the next read: False where nothing is cached, so that
    #: ``contains`` does not load a whole page that no later request could use.
    keeps_pages: bool

    async def lookup_first_page(self, user_id: UUID) -> tuple[FirstPage | None, int]:
        """The cached page, or None and the ``version`` token to store a load under: one round
        trip on a miss, where a lookup then ``version`` would take two."""

    async def set_first_page(self, user_id: UUID, page: FirstPage, version: int) -> None: ...

    async def get_count(self, user_id: UUID) -> int | None: ...

    async def set_count(self, user_id: UUID, count: int, version: int) -> None: ...

    async def version(self, user_id: UUID) -> int:
        """A token taken before loading from the database; stale loads are not stored."""

    async def invalidate_user(self, user_id: UUID) -> None: ...

    async def purge_user(self, user_id: UUID) -> None:
        """An erasure: invalidate, and delete the user's entries rather than leave them
        unreachable until their TTL (they name the user's products)."""


class FeatureFlags(Protocol):
    def enabled(self, flag: str, user_id: UUID) -> bool:
        """Sticky per user: one user gets one answer on every instance, and a user inside a
        rollout stays inside as its percentage grows."""


class Clock(Protocol):
    def now(self) -> datetime: ...
