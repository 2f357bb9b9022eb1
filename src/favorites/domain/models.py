"""Plain values the service layer passes around. No I/O, no framework types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Favorite:
    user_id: UUID
    product_id: UUID
    created_at: datetime


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (access token) or a service client (API key)."""

    kind: PrincipalKind
    subject: str
    user_id: UUID | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    token_id: str | None = None
    token_expires_at: int | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def actor_type(self) -> str:
        """How the audit log names this caller: user, admin or service."""
        if self.kind is PrincipalKind.SERVICE:
            return "service"
        return "admin" if self.is_admin else "user"


class AuditAction(StrEnum):
    FAVORITE_ADDED = "favorite.added"
    FAVORITE_REMOVED = "favorite.removed"
    FAVORITES_VIEWED_BY_ADMIN = "favorites.viewed_by_admin"
    USER_ERASED = "user.erased"
    PRODUCT_DELETED = "product.deleted"
    TOKEN_FAMILY_REVOKED = "token.family_revoked"  # noqa: S105 -- an audit action name, not a secret


class AddOutcome(StrEnum):
    """What adding one favorite did."""

    CREATED = "created"
    EXISTS = "exists"  # the user had it already: nothing changed
    FULL = "full"  # the user holds the most favorites allowed: nothing changed
    NO_PRODUCT = "no_product"  # asked to check, and the product is unknown or deleted
    REVOKED = "revoked"  # the access token asking is revoked (an erasure, say): nothing changed


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: AuditAction
    actor_id: str
    actor_type: str
    subject_user_id: str | None = None
    product_id: UUID | None = None
    request_id: str | None = None
    outcome: str = "success"
