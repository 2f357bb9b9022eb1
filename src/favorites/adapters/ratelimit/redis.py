"""The limiter shared by every instance through Redis, with an explicit failure policy.

Counting uses ``limits``' async Redis storage (redis-py underneath): one ``INCRBY`` + ``EXPIRE``
Lua script per request on the key ``<scope>:<identity>:<window>``. ``limits``' strategies are not
used as such because ``FixedWindowRateLimiter.hit`` returns only a bool, and its
``get_window_stats`` costs two more round trips for the headers; the storage's ``incr`` returns the
count, and the clock-aligned window gives the reset without asking Redis.

Failure policy (fail open to per-instance limiting, never to a 5xx): a Redis error or a call slower
than ``deadline`` opens a circuit breaker; for ``cooldown`` seconds every request is counted by the
in-process limiter, then one request probes Redis again (the others stay in process while it does).
So a dead Redis costs at most one timeout per cooldown, not one per request. One WARNING per outage,
one INFO when Redis answers again; every failed call is counted (``failures``) and the breaker's
state is reported through ``on_state`` (the ``circuit_breaker_state`` gauge, wired in bootstrap).
An identity found over its limit is remembered until its window ends and refused without a round
trip, so a client hammering past its limit costs Redis nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from favorites.adapters.ratelimit.memory import InProcessRateLimiter
from favorites.adapters.ratelimit.port import Decision, RateLimit, Scope

log = logging.getLogger("favorites.ratelimit")

KEY_PREFIX = "favorites:ratelimit"
#: Socket timeouts for connecting and reading; the whole call also has a deadline (DNS included).
SOCKET_TIMEOUT = 0.1
DEADLINE = 0.15
COOLDOWN = 5.0


def storage_uri(redis_url: str, cluster: bool) -> tuple[str, dict[str, Any]]:
    """The ``limits`` storage URI (and extra client options) for ``FAVORITES_REDIS_URL``.

    ``redis://`` / ``rediss://`` / ``unix://`` map to ``async+redis[s]://`` / ``async+redis+unix://``.
    With ``FAVORITES_REDIS_CLUSTER=true`` the hosts map to ``async+redis+cluster://h:p[,h:p]`` (a
    cluster has no database number, so the path is dropped; ``rediss`` becomes ``ssl=True``).
    """
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("FAVORITES_REDIS_URL must start with redis://, rediss:// or unix://")
    if not cluster:
        return ("async+redis+unix://" + rest if scheme == "unix" else "async+" + redis_url), {}
    if scheme == "unix":
        raise ValueError("FAVORITES_REDIS_CLUSTER=true needs redis:// or rediss:// host:port URLs")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return "async+redis+cluster://" + netloc, ({"ssl": True} if scheme == "rediss" else {})


def build_storage(redis_url: str, cluster: bool, *, timeout: float = SOCKET_TIMEOUT) -> RedisStorage:
    """A ``limits`` storage with short timeouts and no client-side retries (the breaker decides)."""
    uri, extra = storage_uri(redis_url, cluster)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # redis-py retries 10 times with backoff by default: seconds per request when Redis is dead.
        "retry": Retry(NoBackoff(), 0),
        **extra,
    }
    storage_class = RedisClusterStorage if cluster else RedisStorage
    return storage_class(uri, implementation="redispy", key_prefix=KEY_PREFIX, **options)


def _unreported(state: str) -> None:
    return None


class RedisRateLimiter:
    """Counts in Redis; falls back to ``InProcessRateLimiter`` while Redis fails (see module doc)."""

    def __init__(
        self,
        storage: RedisStorage,
        rates: Mapping[Scope, RateLimit],
        *,
        deadline: float = DEADLINE,
        cooldown: float = COOLDOWN,
        on_state: Callable[[str], None] = _unreported,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._rates = dict(rates)
        self._fallback = InProcessRateLimiter(rates, clock)
        self._deadline = deadline
        self._cooldown = cooldown
        self._on_state = on_state
        self._clock = clock
        self._errors: tuple[type[BaseException], ...] = (
            *_as_tuple(storage.base_exceptions), OSError, TimeoutError)
        #: 0 while Redis answers (breaker closed); else the monotonic time of the next probe.
        self._open_until = 0.0
        self._probing = False
        self._outage_started = 0.0
        #: scope -> (window, identities already over the limit): denied here without a round trip,
        #: so a client hammering past its limit costs Redis nothing until the window ends.
        self._exhausted: dict[Scope, tuple[int, set[str]]] = {}
        #: Counted for metrics and tests: failed Redis calls, requests counted in process, outages.
        self.failures = 0
        self.fallback_hits = 0
        self.outages = 0
        on_state("closed")

    async def hit(self, scope: Scope, identity: str) -> Decision:
        rate = self._rates[scope]
        window, reset_after = rate.window(self._clock())
        exhausted = self._exhausted.get(scope)
        if exhausted is not None and exhausted[0] == window and identity in exhausted[1]:
            return Decision(False, rate.amount, 0, reset_after)
        probe = False
        if self._open_until:
            if self._probing or time.monotonic() < self._open_until:
                return self._in_process(scope, identity)
            self._probing = probe = True
            self._on_state("half_open")
        try:
            async with asyncio.timeout(self._deadline):
                count = await self._storage.incr(f"{scope}:{identity}:{window}", rate.period)
        except self._errors as exc:
            self._trip(exc)
            return self._in_process(scope, identity)
        finally:
            if probe:
                self._probing = False
        if probe:
            self._recover()
        decision = Decision.of(rate, count, reset_after)
        if not decision.allowed:
            if exhausted is None or exhausted[0] != window:
                exhausted = (window, set())
                self._exhausted[scope] = exhausted
            exhausted[1].add(identity)
        return decision

    def _in_process(self, scope: Scope, identity: str) -> Decision:
        self.fallback_hits += 1
        return self._fallback.count(scope, identity)

    def _trip(self, exc: BaseException) -> None:
        self.failures += 1
        reason = type(exc).__name__
        now = time.monotonic()
        if not self._open_until:
            self.outages += 1
            self._outage_started = now
            log.warning(
                "rate limiter: Redis unavailable (%s: %s); limiting per instance in process, "
                "probing Redis every %.0fs", reason, str(exc)[:200], self._cooldown)
        self._open_until = now + self._cooldown
        self._on_state("open")

    def _recover(self) -> None:
        log.info("rate limiter: Redis answers again after %.1fs; back to the shared limit",
                 time.monotonic() - self._outage_started)
        self._open_until = 0.0
        self._on_state("closed")

    async def readiness(self) -> str:
        if self._open_until:
            return "degraded: redis unavailable, limiting per instance"
        return "ok"

    async def close(self) -> None:
        bridge = self._storage.bridge
        if isinstance(bridge, RedispyBridge):
            client: Any = bridge.get_connection()
            await client.aclose()
        await self._fallback.close()


def _as_tuple(
    exceptions: type[Exception] | tuple[type[Exception], ...],
) -> tuple[type[Exception], ...]:
    return exceptions if isinstance(exceptions, tuple) else (exceptions,)
