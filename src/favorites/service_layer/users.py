"""GDPR erasure: everything the service keeps about a user goes, except a pseudonymous audit trail."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from uuid import UUID

from favorites.domain import access
from favorites.domain.models import AuditAction, AuditEntry, Principal
from favorites.service_layer.ports import (
    Clock,
    FavoritesCache,
    Revocations,
    UnitOfWorkFactory,
    revoke_locally,
)
from favorites.tasks import runs_to_completion


class UsersService:
    def __init__(
        self, uow: UnitOfWorkFactory, cache: FavoritesCache, clock: Clock, pseudonym_key: bytes,
        revocations: Revocations, *, token_leeway_seconds: int,
    ):
        self._uow = uow
        #: Tokens are accepted this long past their expiry: an erasure revokes those too.
        self._leeway = timedelta(seconds=token_leeway_seconds)
        self._cache = cache
        self._clock = clock
        self._key = pseudonym_key
        #: This instance refuses an erased user's access tokens at once (others within a sync).
        self._revocations = revocations

    def pseudonym(self, user_id: UUID) -> str:
        """Keyed hash: stable (audit rows of one user stay linkable) but not reversible."""
        digest = hmac.new(self._key, user_id.bytes, hashlib.sha256).hexdigest()
        return "erased:" + digest[:32]

    @runs_to_completion
    async def erase(
        self, principal: Principal, user_id: UUID, request_id: str | None = None
    ) -> int:
        """Idempotent: a second call deletes nothing and records another ``user.erased``.

        The user's unexpired access tokens are revoked with the refresh tokens: otherwise one
        could add favorites again, for up to an hour, to a user who has been erased."""
        access.ensure_scope(principal, "users:erase")
        pseudonym = self.pseudonym(user_id)
        now = self._clock.now()
        # user_id: the user's next reads go to the primary, not a replica still showing the data.
        async with self._uow(user_id=user_id) as uow:
            # The user's lock, until the commit: an add running now finishes first (and its
            # favorite is deleted here), one arriving later sees the revocations below.
            await uow.favorites.lock_user(user_id)
            deleted = await uow.favorites.delete_all_for_user(user_id)
            live = await uow.refresh_tokens.live_access_tokens_of_user(user_id,
                                                                       now - self._leeway)
            for jti, expires_at in live:
                await uow.revoked_tokens.add(jti, expires_at, now)
            await uow.refresh_tokens.delete_for_user(user_id)
            await uow.audit.pseudonymise_user(str(user_id), pseudonym)
            await uow.audit.record(
                AuditEntry(AuditAction.USER_ERASED, principal.subject, principal.actor_type,
                           pseudonym, None, request_id),
                self._clock.now(),
            )
            await uow.commit()
        revoke_locally(self._revocations, live)
        await self._cache.purge_user(user_id)
        return deleted
