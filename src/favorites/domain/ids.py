"""UUID parsing shared by every entry point: one rule for what an id may look like."""

from __future__ import annotations

from uuid import UUID

from favorites.domain.errors import ValidationFailed


def parse_uuid(value: str, name: str) -> UUID:
    """Accept canonical, uppercase and hyphen-less UUIDs (any version); refuse everything else.

    ``uuid.UUID`` also accepts braces and ``urn:uuid:`` prefixes; those are refused so that one id
    has few spellings in logs and caches.
    """
    if len(value) in (32, 36) and value.isascii() and "{" not in value and ":" not in value:
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationFailed(f"{name} must be a UUID")
