"""UUID parsing shared by every entry point: one rule for what an id may look like."""

from __future__ import annotations

import re
from uuid import UUID

from favorites.domain.errors import ValidationFailed

#: The spellings accepted: canonical (hyphens at 8-4-4-4-12) or none, hex digits of either case.
#: Checked before ``uuid.UUID``, which is laxer than its documentation: it drops every hyphen
#: wherever it stands, and hands the rest to ``int(…, 16)``, which takes a sign, surrounding
#: blanks and ``_`` between digits; ``+``, ``_`` or a misplaced hyphen would otherwise give an id
#: a second spelling in logs and caches, or a different id than the one the client meant.
_SPELLING = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}")


def parse_uuid(value: str, name: str) -> UUID:
    """Accept canonical, uppercase and hyphen-less UUIDs (any version); refuse everything else
    (braces, ``urn:uuid:``, misplaced hyphens, signs, blanks, ``_``) with a 422."""
    if _SPELLING.fullmatch(value):
        return UUID(value)
    raise ValidationFailed(f"{name} must be a UUID")
