"""Every Redis call of the caches goes through one ``RedisGate``: breaker, deadline, epoch.

Failure policy: a cache never fails a request. A Redis error, or a call slower than ``deadline``,
counts as a failure; ``failure_threshold`` consecutive failures open the circuit breaker, after
which Redis is not called at all (reads go to the database, invalidations bump the epoch) until
``reset_timeout`` has passed and one probe succeeds. When the breaker closes again the epoch is
re-read before Redis serves anything (see ``epoch``). State changes are logged by the breaker and
exported as ``circuit_breaker_state{dependency="redis"}``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from typing import Any, Final, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from favorites.adapters.cache.epoch import CacheEpoch
from favorites.adapters.cache.multiplex import MultiplexedRedis, Reconnecting
from favorites.adapters.cache.redis_client import RedisClient
from favorites.adapters.catalog.breaker import BreakerState, CircuitBreaker, CircuitOpen
from favorites.deadlines import deadline

T = TypeVar("T")

#: What a failing Redis raises: redis-py's errors, cluster topology errors, sockets, deadlines.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError, RedisClusterException, OSError, TimeoutError,
)

#: Whole-call deadline; the socket timeouts (``redis_client``) are shorter, this catches the rest.
DEADLINE = 0.15
FAILURE_THRESHOLD = 3
RESET_TIMEOUT = 2.0


class _Skipped(Enum):
    SKIPPED = "skipped"


#: Returned instead of a result when Redis was not (successfully) called.
SKIPPED: Final = _Skipped.SKIPPED


def _ignore_state(state: str) -> None:
    return None


class RedisGate:
    def __init__(
        self,
        client: RedisClient,
        epoch: CacheEpoch,
        *,
        deadline: float = DEADLINE,
        failure_threshold: int = FAILURE_THRESHOLD,
        reset_timeout: float = RESET_TIMEOUT,
        on_breaker_state: Callable[[str], None] = _ignore_state,
    ):
        self.client = client
        #: The caches' GET/MGET/SET on one pipelined connection (single node; see ``multiplex``).
        self.fast = MultiplexedRedis.like(client) if isinstance(client, Redis) else None
        self.epoch = epoch
        self.deadline = deadline
        self._on_breaker_state = on_breaker_state
        self.breaker = CircuitBreaker(
            "redis", failure_threshold=failure_threshold, reset_timeout=reset_timeout,
            on_state_change=self._state_changed,
        )
        self._bypass_tokens = itertools.count(1)
        #: Failed or timed-out calls (tests, logs).
        self.failures = 0
        #: The error of the last failure the breaker counted (see ``call``).
        self._counted: BaseException | None = None
        #: Work that outlives its caller's cancellation (``shielded``), awaited by ``close``.
        self._shielded: set[asyncio.Future[None]] = set()
        on_breaker_state(BreakerState.CLOSED.value)

    def __repr__(self) -> str:
        return f"RedisGate(breaker={self.breaker.state.value}, epoch={self.epoch!r})"

    @property
    def usable(self) -> bool:
        """Entries may be read and written (the breaker is asked per call)."""
        return self.epoch.fresh

    def bypass_token(self) -> int:
        """A version token that stores nothing and is shared by no other load."""
        return -next(self._bypass_tokens)

    async def call(self, op: Callable[[], Awaitable[T]], *, read: bool = False,
                   bounded: bool = False) -> T | _Skipped:
        """Run ``op`` under the breaker and the deadline; SKIPPED when it did not (or, for a
        ``read``, when the epoch must be re-read first: the breaker closed during this call).
        ``bounded``: ``op`` enforces its own deadline (``MultiplexedRedis``), so no timer here."""
        try:
            self.breaker.allow()
        except CircuitOpen:
            return SKIPPED
        try:
            if bounded:
                result = await op()
            else:
                async with deadline(self.deadline):
                    result = await op()
        except Reconnecting:
            # A read that would have waited for a connection attempt under way (whose own
            # caller the breaker hears from) goes to the database at once instead.
            self.breaker.release()
            return SKIPPED
        except REDIS_ERRORS as exc:
            self.failures += 1
            if exc is self._counted and self.breaker.state is BreakerState.CLOSED:
                # One event failing every call in flight (the multiplexed connection lost or
                # closed by its watchdog gives them all the same error) is one failure: a busy
                # moment with thirty commands in flight is not three failed attempts to reach
                # Redis. A Redis that is really down fails the reconnections that follow.
                self.breaker.release()
                return SKIPPED
            self._counted = exc
            self.breaker.failure(repr(exc))
            return SKIPPED
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.success()
        if read and not self.epoch.fresh:
            return SKIPPED
        return result

    async def shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` to its end even if the caller is cancelled (an invalidation after a
        committed write: a shutdown must not take it along); ``close`` waits for it."""
        task = asyncio.ensure_future(work)
        self._shielded.add(task)
        task.add_done_callback(self._shielded.discard)
        await asyncio.shield(task)

    async def close(self) -> None:
        if self._shielded:
            await asyncio.wait(self._shielded, timeout=5)
        if self.fast is not None:
            await self.fast.aclose()

    async def readiness(self) -> str:
        if self.breaker.state is BreakerState.OPEN:
            return "degraded: redis circuit open, caches bypassed"
        if not self.epoch.fresh:
            return "degraded: cache epoch not synchronised, caches bypassed"
        pong = await self.call(self.client.ping)
        return "ok" if pong is not SKIPPED else "degraded: redis unreachable, caches bypassed"

    def _state_changed(self, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.CLOSED:
            # Redis is back, maybe with data older than invalidations we (or others) could not
            # deliver: the epoch is re-read before anything is served from it.
            self.epoch.require_sync()
        self._on_breaker_state(new.value)
