"""What is cached and for how long: one place for the TTLs (SPEC §5, seed Step 8).

TTLs are jittered by ±10 % so entries filled together (a deploy, a flushed cache) do not all
expire in the same second and come back to the database as one wave.
"""

from __future__ import annotations

import random

#: The three caches, named as in the ``cache_requests_total{cache_name}`` metric.
FAVORITES_PAGE = "favorites_page"
FAVORITES_COUNT = "favorites_count"
PRODUCT_EXISTS = "product_exists"

PAGE_TTL = 300.0
COUNT_TTL = 300.0
#: Only "exists" is cached: see ``catalog.CachedCatalog`` for why "unknown" is not.
PRODUCT_TTL = 3600.0
JITTER = 0.10

#: A version key outlives every entry it validates (entries live at most TTL x 1.1), so an entry
#: tagged with an old version can never become valid again when its version key expires.
USER_VERSION_TTL = 2 * PAGE_TTL
PRODUCT_VERSION_TTL = 2 * PRODUCT_TTL

_random = random.Random()  # noqa: S311 (spreading expiries, not security)


def jittered(seconds: float) -> float:
    """``seconds`` ± JITTER, uniformly."""
    return seconds * _random.uniform(1 - JITTER, 1 + JITTER)
