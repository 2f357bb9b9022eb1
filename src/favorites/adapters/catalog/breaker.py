"""A circuit breaker: after N consecutive failures stop calling for a cool-down, then probe once.

closed --N failures--> open --cool-down elapsed, next call--> half-open (one probe in flight)
half-open --probe succeeds--> closed;  half-open --probe fails--> open (a fresh cool-down).

Callers say what happened with ``success()``, ``failure()`` or ``release()`` (outcome unknown,
e.g. the call was cancelled or failed for a local reason). Each state change is logged once as a
WARNING; individual calls are not. Single event loop, so no locks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger("favorites.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpen(Exception):
    """The breaker refused the call; ``retry_after`` is whole seconds, at least 1."""

    def __init__(self, name: str, retry_after: int):
        super().__init__(f"circuit {name!r} is open; retry in {retry_after} s")
        self.name = name
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"CircuitOpen(name={self.name!r}, retry_after={self.retry_after})"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ):
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        #: What the failure that opened the breaker last was, for its WARN line.
        self._reason: str | None = None

    def __repr__(self) -> str:
        return (f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
                f"failures={self._failures})")

    @property
    def state(self) -> BreakerState:
        return self._state

    def retry_after(self) -> int:
        """Whole seconds until a call may be tried again (at least 1)."""
        remaining = self.reset_timeout - (self._clock() - self._opened_at)
        return max(1, math.ceil(remaining))

    def allow(self) -> None:
        """Raise CircuitOpen unless a call may go out now. A call let through must report back."""
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_timeout:
                raise CircuitOpen(self.name, self.retry_after())
            self._change(BreakerState.HALF_OPEN)
        if self._probe_in_flight:
            # One probe at a time; the others fail fast until it reports.
            raise CircuitOpen(self.name, 1)
        self._probe_in_flight = True

    def success(self) -> None:
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            self._change(BreakerState.CLOSED)
        # A success reported while open comes from a call let through before the breaker opened:
        # only the probe decides when to close.

    def failure(self, reason: str | None = None) -> None:
        """``reason``: what failed (an exception's repr), named in the line when this opens the
        breaker: "open" alone does not tell an operator a refused connection from a timeout."""
        self._reason = reason
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            self._open()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
        # Failures of calls that started before the breaker opened do not extend the cool-down.

    def release(self) -> None:
        """The call ended without telling whether the dependency works (cancelled, local error)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._change(BreakerState.OPEN)

    def _change(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        # One WARN per outage, when it begins; the probes while it lasts (open -> half-open ->
        # open, every reset_timeout) and the recovery are INFO, as the rate limiter logs them.
        level = logging.WARNING if old is BreakerState.CLOSED else logging.INFO
        extra = {"breaker": self.name, "fromState": old.value, "toState": new.value}
        if new is BreakerState.OPEN and self._reason is not None:
            extra["lastFailure"] = self._reason
        log.log(level, "circuit breaker %s: %s -> %s", self.name, old.value, new.value,
                extra=extra)
        if self._on_state_change is not None:
            self._on_state_change(old, new)
