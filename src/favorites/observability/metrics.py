"""The metric catalogue and the helpers that feed it. One place per fact.

Names, types and labels are a contract with the dashboards and alert rules: do not rename.

==================================  =========  ===============================================
metric                              type       labels
==================================  =========  ===============================================
http_requests_total                 counter    method, path (route template), status
http_request_duration_seconds       histogram  method, path
favorites_operations_total          counter    operation, status (success|client_error|error)
db_connections_active               gauge      pool (primary|replica)
db_connections_max                  gauge      pool
db_query_duration_seconds           histogram  operation (select|insert|update|delete|other)
cache_hit_ratio                     gauge      cache_name (computed at scrape time)
cache_requests_total                counter    cache_name, result (hit|miss|error)
rate_limited_requests_total         counter    scope (user|ip|service)
circuit_breaker_state               gauge      dependency (0 closed, 1 half-open, 2 open)
favorites_ready                     gauge      (none; the last /health/ready answer: 1 = 200)
favorites_active_users              gauge      (none; computed at scrape time)
==================================  =========  ===============================================

With several worker processes prometheus-client runs in multiprocess mode (``favorites serve``
sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts); gauges declare how workers combine.
Every label value is bounded: helpers refuse values outside their catalogue.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, values

# ``*_created`` series double the series count and multiprocess mode cannot serve them anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _process_id() -> Callable[[], int]:
    """This process's id, read from memory; brought up to date in a child after ``fork``.

    In multiprocess mode every increment, observation and gauge update asks the process
    identifier whether the process has forked since (to switch to files of its own). The default
    asks ``os.getpid()``, a system call (0.3 µs each on the virtualised bench machine): traced
    on a served worker under mixed traffic, 6.9 calls per socket write, 1.8 with this. The
    answer only changes at a fork, which is where it is updated.
    """
    current = [os.getpid()]

    def after_fork() -> None:
        current[0] = os.getpid()

    os.register_at_fork(after_in_child=after_fork)
    return lambda: current[0]


if values.ValueClass is not values.MutexValue:  # multiprocess mode; before any metric is made
    values.ValueClass = values.MultiProcessValue(_process_id())  # type: ignore[no-untyped-call]

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

OPERATIONS = ("add", "remove", "list", "get", "count", "contains", "product_count", "bulk",
              "export", "erase_user", "register_product", "delete_product", "issue_token",
              "refresh_token", "logout")
OPERATION_STATUSES = ("success", "client_error", "error")
POOLS = ("primary", "replica")
DB_OPERATIONS = ("select", "insert", "update", "delete", "other")
CACHE_NAMES = ("favorites_page", "favorites_count", "product_exists")
CACHE_RESULTS = ("hit", "miss", "error")
RATE_LIMIT_SCOPES = ("user", "ip", "service")
BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

http_requests_total = Counter(
    "http_requests_total", "HTTP requests served, by route template and status.",
    ("method", "path", "status"),
)
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds", "Time from the first byte in to the last byte out.",
    ("method", "path"), buckets=HTTP_BUCKETS,
)
favorites_operations_total = Counter(
    "favorites_operations_total", "Business operations, by outcome.", ("operation", "status"),
)
db_connections_active = Gauge(
    "db_connections_active", "Database connections checked out of the pool.", ("pool",),
    multiprocess_mode="livesum",
)
db_connections_max = Gauge(
    "db_connections_max", "Most connections the pool may open.", ("pool",),
    multiprocess_mode="livesum",
)
db_query_duration_seconds = Histogram(
    "db_query_duration_seconds", "Database statement execution time.", ("operation",),
    buckets=DB_BUCKETS,
)
cache_requests_total = Counter(
    "cache_requests_total", "Cache lookups, by result.", ("cache_name", "result"),
)
rate_limited_requests_total = Counter(
    "rate_limited_requests_total", "Requests refused with 429, by limit scope.", ("scope",),
)
circuit_breaker_state = Gauge(
    "circuit_breaker_state", "Circuit breaker per dependency: 0 closed, 1 half-open, 2 open.",
    ("dependency",), multiprocess_mode="livemax",
)

#: Set by each readiness check. ``up`` says Prometheus reached the admin port, which answers on
#: its own thread: with the database unreachable from every pod the Services have no endpoints,
#: no user request arrives to fail, and ``up`` stays 1. This is what says so (the alert
#: ``FavoritesServiceDown``). Most recent across a pod's workers, as the kubelet sees it.
favorites_ready = Gauge(
    "favorites_ready",
    "1 when this instance's last readiness check answered 200 (ready or degraded), 0 when it "
    "answered 503 (database unreachable, draining).",
    multiprocess_mode="livemostrecent",
)

#: Names of the two gauges computed at scrape time (see ``exposition``).
CACHE_HIT_RATIO = "cache_hit_ratio"
ACTIVE_USERS = "favorites_active_users"

CATALOGUE: tuple[Any, ...] = (
    http_requests_total, http_request_duration_seconds, favorites_operations_total,
    db_connections_active, db_connections_max, db_query_duration_seconds, cache_requests_total,
    rate_limited_requests_total, circuit_breaker_state, favorites_ready,
)

_rate_limited = {scope: rate_limited_requests_total.labels(scope) for scope in RATE_LIMIT_SCOPES}
_cache = {(name, result): cache_requests_total.labels(name, result)
          for name in CACHE_NAMES for result in CACHE_RESULTS}
_operations = {(op, status): favorites_operations_total.labels(op, status)
               for op in OPERATIONS for status in OPERATION_STATUSES}


def _refuse(kind: str, value: object, allowed: Iterable[str]) -> ValueError:
    return ValueError(f"{kind} {value!r} is not one of {', '.join(sorted(allowed))}")


def record_rate_limited(scope: str) -> None:
    """Count one request refused by the rate limiter; ``scope`` is user, ip or service."""
    try:
        _rate_limited[scope].inc()
    except KeyError:
        raise _refuse("rate-limit scope", scope, RATE_LIMIT_SCOPES) from None


def record_cache_request(cache_name: str, result: str) -> None:
    """Count one cache lookup: ``result`` is hit, miss or error. Feeds ``cache_hit_ratio``."""
    try:
        _cache[cache_name, result].inc()
    except KeyError:
        raise _refuse("cache/result", (cache_name, result),
                      [f"{n}/{r}" for n in CACHE_NAMES for r in CACHE_RESULTS]) from None


def set_circuit_breaker_state(dependency: str, state: str | int) -> None:
    """``state``: closed/half_open/open (or 0/1/2). ``dependency``: a short fixed name."""
    value = BREAKER_STATES.get(state) if isinstance(state, str) else state
    if value not in (0, 1, 2):
        raise _refuse("circuit breaker state", state, BREAKER_STATES)
    circuit_breaker_state.labels(dependency).set(value)


def operation_counter(operation: str, status: str) -> Any:
    """The pre-built counter child of one (operation, status); for the operations helper."""
    try:
        return _operations[operation, status]
    except KeyError:
        raise _refuse("operation/status", (operation, status), OPERATIONS) from None


def db_query_histograms() -> dict[str, Any]:
    return {op: db_query_duration_seconds.labels(op) for op in DB_OPERATIONS}


class HttpMetrics:
    """Request counters and histograms with label children cached per (method, route, status).

    The method is collapsed to ``OTHER`` outside the standard set and the path is always a route
    template or ``unmatched``, so the cache and the series stay bounded.
    """

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:
            children = self._make(key)
        children[0].inc()
        children[1].observe(seconds)

    def _make(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        method, path, status = key
        label = method if method in HTTP_METHODS else "OTHER"
        children = (http_requests_total.labels(label, path, str(status)),
                    http_request_duration_seconds.labels(label, path))
        self._children[key] = children
        return children
