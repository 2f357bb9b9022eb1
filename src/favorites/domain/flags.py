"""The feature flags this service knows, and what each one is when nobody has set it.

A flag not listed here is never asked for, so a typo in the flag file cannot switch anything on.
"""

from __future__ import annotations

from typing import Final

#: The v2 additions to the favorites API: bulk add/remove and export of a user's favorites.
#: Rolled out per user (sticky), 1 → 10 → 50 → 100 %, off until the flag file says otherwise.
ENABLE_FAVORITES_V2: Final = "enable_favorites_v2"

DEFAULTS: Final[dict[str, bool]] = {ENABLE_FAVORITES_V2: False}
