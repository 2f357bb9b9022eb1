"""The circuit breaker's state machine on a fake clock (no sockets)."""

from __future__ import annotations

import pytest

from favorites.adapters.catalog.breaker import BreakerState, CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, changes: list[tuple[BreakerState, BreakerState]]) -> CircuitBreaker:
    return CircuitBreaker("test", failure_threshold=3, reset_timeout=10, clock=clock,
                          on_state_change=lambda old, new: changes.append((old, new)))


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    clock, changes = Clock(), list[tuple[BreakerState, BreakerState]]()
    breaker = _breaker(clock, changes)
    for _ in range(2):
        breaker.allow()
        breaker.failure()
    breaker.allow()
    breaker.success()
    for _ in range(2):
        breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_open_refuses_with_the_remaining_cool_down_then_probes_once() -> None:
    clock, changes = Clock(), list[tuple[BreakerState, BreakerState]]()
    breaker = _breaker(clock, changes)
    for _ in range(3):
        breaker.allow()
        breaker.failure()
    clock.now += 3.2
    with pytest.raises(CircuitOpen) as refused:
        breaker.allow()
    assert refused.value.retry_after == 7
    clock.now += 6.7
    with pytest.raises(CircuitOpen) as almost:
        breaker.allow()
    assert almost.value.retry_after == 1  # never 0
    clock.now += 0.2
    breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.allow()  # one probe at a time
    breaker.release()  # the probe was cancelled: the next call may probe
    breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as fresh:
        breaker.allow()
    assert fresh.value.retry_after == 10
    clock.now += 10
    breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_late_answers_of_calls_started_before_it_opened_change_nothing() -> None:
    clock, changes = Clock(), list[tuple[BreakerState, BreakerState]]()
    breaker = _breaker(clock, changes)
    for _ in range(3):
        breaker.allow()
        breaker.failure()
    clock.now += 5
    breaker.success()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.allow()
    assert refused.value.retry_after == 5  # the cool-down was not extended


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker("x", reset_timeout=0)
