"""Rate limiting: one port, an in-process and a Redis-backed implementation (picked in bootstrap)."""

from favorites.adapters.ratelimit.memory import InProcessRateLimiter
from favorites.adapters.ratelimit.port import (
    ADDRESS,
    SERVICE,
    USER,
    Decision,
    RateLimit,
    RateLimiter,
    Scope,
)
from favorites.adapters.ratelimit.redis import RedisRateLimiter, build_storage, storage_uri

__all__ = [
    "ADDRESS",
    "SERVICE",
    "USER",
    "Decision",
    "InProcessRateLimiter",
    "RateLimit",
    "RateLimiter",
    "RedisRateLimiter",
    "Scope",
    "build_storage",
    "storage_uri",
]
