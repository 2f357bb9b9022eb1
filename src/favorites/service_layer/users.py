"""GDPR erasure: everything the service keeps about a user goes, except a pseudonymous audit trail."""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID

from favorites.domain import access
from favorites.domain.models import AuditAction, AuditEntry, Principal
from favorites.service_layer.ports import Clock, FavoritesCache, UnitOfWorkFactory


class UsersService:
    def __init__(
        self, uow: UnitOfWorkFactory, cache: FavoritesCache, clock: Clock, pseudonym_key: bytes
    ):
        self._uow = uow
        self._cache = cache
        self._clock = clock
        self._key = pseudonym_key

    def pseudonym(self, user_id: UUID) -> str:
        """Keyed hash: stable (audit rows of one user stay linkable) but not reversible."""
        digest = hmac.new(self._key, user_id.bytes, hashlib.sha256).hexdigest()
        return "erased:" + digest[:32]

    async def erase(
        self, principal: Principal, user_id: UUID, request_id: str | None = None
    ) -> int:
        """Idempotent: a second call deletes nothing and records another ``user.erased``."""
        access.ensure_scope(principal, "users:erase")
        pseudonym = self.pseudonym(user_id)
        # user_id: the user's next reads go to the primary, not a replica still showing the data.
        async with self._uow(user_id=user_id) as uow:
            deleted = await uow.favorites.delete_all_for_user(user_id)
            await uow.refresh_tokens.delete_for_user(user_id)
            await uow.audit.pseudonymise_user(str(user_id), pseudonym)
            await uow.audit.record(
                AuditEntry(AuditAction.USER_ERASED, principal.subject, principal.actor_type,
                           pseudonym, None, request_id),
                self._clock.now(),
            )
            await uow.commit()
        await self._cache.invalidate_user(user_id)
        return deleted
