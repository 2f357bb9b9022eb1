"""The rate limiter's port: what the HTTP layer asks, and the answer it gets.

Strategy: a fixed window aligned to the clock (``now // period``). One request costs one counter
increment (with Redis: one INCR+EXPIRE script, one round trip), and every instance computes the
same window end without asking anyone, so ``RateLimit-Reset`` needs no second round trip. The price
is the fixed window's known burst: up to twice the limit across a window edge, acceptable for an
abuse limit of 100/minute. A moving window would be exact but keeps one Redis list entry per
request (up to the limit, per identity) and needs a second round trip for the headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import limits

#: The buckets a request can be counted in: a signed-in user, a service client, a client address.
Scope = str
USER: Scope = "user"
SERVICE: Scope = "service"
ADDRESS: Scope = "ip"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``amount`` requests per ``period`` seconds."""

    amount: int
    period: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``100/minute`` and the like (the forms ``FAVORITES_RATE_LIMIT`` accepts)."""
        item = limits.parse(text)
        return cls(item.amount, item.get_expiry())

    def window(self, now: float) -> tuple[int, int]:
        """The current window's number, and whole seconds (at least 1) until it ends."""
        window = int(now // self.period)
        return window, max(1, math.ceil((window + 1) * self.period - now))


@dataclass(frozen=True, slots=True)
class Decision:
    """One counted request: allowed or not, and what the ``RateLimit-*`` headers say."""

    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the window resets; also the ``Retry-After`` of a 429.
    reset_after: int

    @classmethod
    def of(cls, rate: RateLimit, count: int, reset_after: int) -> Decision:
        return cls(count <= rate.amount, rate.amount, max(0, rate.amount - count), reset_after)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """IETF draft ``RateLimit-Limit``/``-Remaining``/``-Reset``, ready for ASGI."""
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_after),
        ]


class RateLimiter(Protocol):
    """Counts a request against ``scope``/``identity`` and says whether it may proceed."""

    async def hit(self, scope: Scope, identity: str) -> Decision: ...

    async def readiness(self) -> str:
        """``ok``, or why limiting is degraded (reported by /health/ready, never fatal)."""
        ...

    async def close(self) -> None: ...
