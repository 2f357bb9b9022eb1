"""Token lifecycle: issue, rotate and revoke (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).

Refresh tokens are opaque random strings; only their sha256 is stored. Every refresh spends the
presented token and issues a new one in the same family. Presenting a spent token means it was
stolen or replayed, so the whole family is revoked. Two concurrent refreshes of one token are
treated the same way: exactly one wins the atomic ``mark_used``, the other is a reuse and revokes
the family (the client signs in again). That is the strict reading of RFC 9700; we prefer a rare
re-login to a window in which a stolen token keeps working.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID, uuid4

from favorites.domain import access
from favorites.domain.errors import Forbidden, InvalidToken
from favorites.domain.models import AuditAction, AuditEntry, Principal
from favorites.service_layer.ports import (
    Clock,
    RefreshTokenRecord,
    Revocations,
    UnitOfWork,
    UnitOfWorkFactory,
    revoke_locally,
)

security_log = logging.getLogger("favorites.security")

ALLOWED_ROLES = frozenset({"user", "admin"})


class AccessTokenSigner(Protocol):
    def mint(self, user_id: UUID, roles: tuple[str, ...],
             token_id: str | None = None) -> tuple[str, int]:
        """Returns the signed token (whose ``jti`` is ``token_id`` when given) and its
        lifetime in seconds."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int

    def as_json(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
        }


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        signer: AccessTokenSigner,
        revocations: Revocations,
        clock: Clock,
        refresh_ttl_seconds: int,
        *,
        token_leeway_seconds: int,
    ):
        self._uow = uow
        #: Tokens are accepted this long past their expiry: a family's revocation takes those too.
        self._leeway = timedelta(seconds=token_leeway_seconds)
        self._signer = signer
        self._revocations = revocations
        self._clock = clock
        self._refresh_ttl = refresh_ttl_seconds

    async def issue(
        self, principal: Principal, user_id: UUID, roles: tuple[str, ...]
    ) -> TokenPair:
        access.ensure_scope(principal, "tokens:issue")
        if not roles or not set(roles) <= ALLOWED_ROLES:
            raise Forbidden("roles must be ['user'] or ['admin']")
        async with self._uow() as uow:
            # The user's lock, as an erasure holds it: a pair issued meanwhile is either
            # committed before the erasure reads the user's tokens, or issued after it.
            await uow.favorites.lock_user(user_id)
            pair = await self._new_pair(uow, uuid4(), user_id, roles)
            await uow.commit()
        return pair

    async def refresh(self, refresh_token: str, request_id: str | None = None) -> TokenPair:
        now = self._clock.now()
        async with self._uow() as uow:
            record = await self._locked(uow, refresh_token)
            if record is None or record.revoked_at is not None or record.expires_at <= now:
                raise InvalidToken("refresh token is invalid, expired or revoked")
            if record.used_at is not None or not await uow.refresh_tokens.mark_used(
                record.token_id, now
            ):
                revoked = await self._revoke_family(uow, record, request_id,
                                                    reason="refresh token reuse")
                await uow.commit()
                revoke_locally(self._revocations, revoked)
                raise InvalidToken("refresh token was already used; its family is revoked")
            pair = await self._new_pair(uow, record.family_id, record.user_id, record.roles)
            await uow.commit()
        return pair

    async def logout(
        self, principal: Principal, refresh_token: str, request_id: str | None = None
    ) -> None:
        """Revoke the refresh family, the access tokens it issued, and the presented access
        token, each until it would have expired."""
        access.ensure_user(principal)
        revoked: list[tuple[str, datetime]] = []
        async with self._uow() as uow:
            record = await self._locked(uow, refresh_token)
            if record is not None and record.user_id != principal.user_id:
                raise Forbidden("that refresh token belongs to another user")
            if record is not None and record.revoked_at is None:
                revoked = await self._revoke_family(uow, record, request_id, reason="logout")
            if principal.token_id is not None and principal.token_expires_at is not None:
                expires = datetime.fromtimestamp(principal.token_expires_at, UTC)
                if principal.token_id not in {jti for jti, _ in revoked}:
                    await uow.revoked_tokens.add(principal.token_id, expires, self._clock.now())
                    revoked.append((principal.token_id, expires))
            await uow.commit()
        revoke_locally(self._revocations, revoked)

    @staticmethod
    async def _locked(uow: UnitOfWork, refresh_token: str) -> RefreshTokenRecord | None:
        """The token's record, read again once its family and then its user are locked.

        The family's lock: a refresh and a logout of one family run one after the other.
        Otherwise a logout's revocation of the family missed the token a concurrent refresh was
        inserting, and that token stayed valid. The user's lock, which an erasure holds until
        it commits: otherwise a refresh the erasure could not see yet inserted a new pair that
        outlived it (the erasure's delete skips rows committed after it began). Always family,
        then user; an erasure takes the user's alone, so the two cannot deadlock."""
        token_hash = hash_refresh_token(refresh_token)
        record = await uow.refresh_tokens.get_by_hash(token_hash)
        if record is None:
            return None
        await uow.refresh_tokens.lock_family(record.family_id)
        await uow.favorites.lock_user(record.user_id)
        return await uow.refresh_tokens.get_by_hash(token_hash)

    async def _new_pair(
        self, uow: UnitOfWork, family_id: UUID, user_id: UUID, roles: tuple[str, ...]
    ) -> TokenPair:
        now = self._clock.now()
        opaque = secrets.token_urlsafe(32)
        access_jti = uuid4().hex
        access_token, expires_in = self._signer.mint(user_id, roles, access_jti)
        await uow.refresh_tokens.insert(
            RefreshTokenRecord(
                token_id=uuid4(),
                family_id=family_id,
                user_id=user_id,
                roles=roles,
                token_hash=hash_refresh_token(opaque),
                issued_at=now,
                expires_at=now + timedelta(seconds=self._refresh_ttl),
                access_jti=access_jti,
                # The token's exp is whole seconds of the signer's clock: a second more, so the
                # revocation never lapses before the token does.
                access_expires_at=now + timedelta(seconds=expires_in + 1),
            )
        )
        return TokenPair(access_token, opaque, expires_in, self._refresh_ttl)

    async def _revoke_family(
        self, uow: UnitOfWork, record: RefreshTokenRecord, request_id: str | None, reason: str
    ) -> list[tuple[str, datetime]]:
        """Revokes the family's refresh tokens and its unexpired access tokens (RFC 9700
        §4.14.2 asks for the former; without the latter, whoever refreshed with a stolen token
        keeps its access token for up to an hour). Returns the access tokens revoked, for
        ``revoke_locally`` once committed."""
        now = self._clock.now()
        await uow.refresh_tokens.revoke_family(record.family_id, now)
        live = await uow.refresh_tokens.live_access_tokens(record.family_id, now - self._leeway)
        for jti, expires_at in live:
            await uow.revoked_tokens.add(jti, expires_at, now)
        await uow.audit.record(
            AuditEntry(AuditAction.TOKEN_FAMILY_REVOKED, str(record.user_id), "user",
                       str(record.user_id), None, request_id,
                       outcome="reuse_detected" if "reuse" in reason else "success"),
            now,
        )
        security_log.warning(
            "token family revoked",
            extra={"event": "token.family_revoked", "reason": reason,
                   "userId": str(record.user_id), "familyId": str(record.family_id),
                   "accessRevoked": len(live)},
        )
        return live
