"""Who may touch whose favorites. Pure rules, so they are tested without HTTP or a database."""

from __future__ import annotations

from uuid import UUID

from favorites.domain.errors import Forbidden, ScopeMissing
from favorites.domain.models import Principal, PrincipalKind


def resolve_user(principal: Principal, raw: UUID | None) -> UUID:
    """Turn the path's ``{user_id}`` (``None`` for ``me``) into the user it names."""
    if raw is None:
        if principal.user_id is None:
            raise Forbidden("'me' needs a user token")
        return principal.user_id
    return raw


def ensure_can_read(principal: Principal, user_id: UUID) -> bool:
    """Owners read their own; admins read anyone's. Returns True when the read must be audited."""
    if principal.kind is PrincipalKind.USER:
        if principal.user_id == user_id:
            return False
        if principal.is_admin:
            return True
    raise Forbidden("these favorites belong to another user")


def ensure_can_write(principal: Principal, user_id: UUID) -> None:
    """Only the owner writes, with a user token. An admin token never writes, its own list
    included: it is a support tool whose every use must be a read, and roles are exclusive
    (a person who shops too has a user token for that)."""
    if principal.kind is PrincipalKind.USER and principal.user_id == user_id:
        if principal.is_admin:
            raise Forbidden("an admin token is read-only; change favorites with a user token")
        return
    raise Forbidden("only the owner may change these favorites")


def ensure_owner(principal: Principal, user_id: UUID) -> None:
    """For owner-only reads (``contains``: hearts on the owner's own product grid)."""
    if principal.kind is PrincipalKind.USER and principal.user_id == user_id:
        return
    raise Forbidden("only the owner may read this")


def ensure_user(principal: Principal) -> None:
    if principal.kind is not PrincipalKind.USER:
        raise Forbidden("this endpoint needs a user token")


def ensure_scope(principal: Principal, scope: str) -> None:
    if principal.kind is not PrincipalKind.SERVICE or scope not in principal.scopes:
        raise ScopeMissing(f"scope {scope!r} is required")
