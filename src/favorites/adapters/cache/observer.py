"""How the caches report lookups; bootstrap passes ``observability.metrics.record_cache_request``.

``result`` is ``hit``, ``miss`` or ``error`` (Redis failed, or was skipped by the open breaker or
an unsynchronised epoch); ``cache_name`` one of ``policy.FAVORITES_PAGE`` / ``FAVORITES_COUNT`` /
``PRODUCT_EXISTS``.
"""

from __future__ import annotations

from collections.abc import Callable

LookupObserver = Callable[[str, str], None]


def ignore_lookup(cache_name: str, result: str) -> None:
    return None
