"""Database statements and pools: ``db_query_duration_seconds``, one span per statement, and
``db_connections_active`` / ``db_connections_max``.

Hooked on the engine's ``before/after_cursor_execute`` and ``handle_error`` events, so every
statement of every repository is covered without touching them; the statements sent on the
driver connection (``adapters.db.driver``) report through ``observe_statements`` to the same
histogram and spans. A span carries ``db.system`` and the statement as it was sent:
parameterized, with placeholders and never bound values;
literals a hand-written statement might contain are replaced by ``?`` too. Per distinct statement
the operation and the sanitized text are computed once and cached.
"""

from __future__ import annotations

import re
import time
import weakref
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db.driver import OPERATIONS, observe_statements
from favorites.observability import metrics
from favorites.observability.tracing import STATE

_ATTR = "_favorites_observed"
_OPERATIONS = {"select": "select", "insert": "insert", "update": "update", "delete": "delete",
               "with": "select"}
_LITERALS = re.compile(r"'(?:[^']|'')*'|(?<![\w$:])\d+(?:\.\d+)?\b")
_MAX_CACHED = 2048
_MAX_STATEMENT = 2000


def sanitize(statement: str) -> str:
    """Placeholders stay, quoted strings and numbers become ``?``; long statements are cut."""
    text = " ".join(statement.split())
    return _LITERALS.sub("?", text)[:_MAX_STATEMENT]


def classify(statement: str) -> str:
    head = statement.lstrip().split(None, 1)
    return _OPERATIONS.get(head[0].lower(), "other") if head else "other"


class _Statements:
    """statement text -> (operation, span name, sanitized text), bounded."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, str, str]] = {}

    def get(self, statement: str) -> tuple[str, str, str]:
        info = self._known.get(statement)
        if info is None:
            operation = OPERATIONS.get(statement) or classify(statement)
            first = statement.lstrip().split(None, 1)
            name = first[0].upper() if first else "SQL"
            info = (operation, name, sanitize(statement))
            if len(self._known) < _MAX_CACHED:
                self._known[statement] = info
        return info


class _PoolGroup:
    """The engines behind one ``pool`` label (the primary, or every replica) summed together.

    An engine counts from its first use until it is disposed; weakly held, so engines of apps
    that are gone (tests build many) drop out. A check-out or check-in (two per unit of work)
    only adjusts the running total by its engine's change and writes one gauge: summing every
    engine and writing both gauges each time was about 4 % of a cache miss's CPU.
    """

    def __init__(self, label: str):
        self.label = label
        self._active = metrics.db_connections_active.labels(label)
        self._max = metrics.db_connections_max.labels(label)
        #: engine -> [checked out, capacity, counting (1) or disposed (0)]
        self._engines: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
        self._total_active = 0

    def add(self, engine: Any, maximum: int) -> None:
        entry = self._engines[engine] = [0, maximum, 1]
        weakref.finalize(engine, self._forget, entry)  # collected without dispose()
        self._publish_max()

    def update(self, engine: Any, checked_out: int) -> None:
        entry = self._engines.get(engine)
        if entry is None:
            return
        if not entry[2]:  # used again after dispose(): counts again
            entry[0], entry[2] = 0, 1
            self._publish_max()
        if checked_out != entry[0]:
            self._total_active += checked_out - entry[0]
            entry[0] = checked_out
            self._active.set(self._total_active)

    def disposed(self, engine: Any) -> None:
        entry = self._engines.get(engine)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: list[int]) -> None:
        if entry[2]:
            self._total_active -= entry[0]
            entry[0], entry[2] = 0, 0
            self._active.set(self._total_active)
            self._publish_max()

    def _publish_max(self) -> None:
        self._max.set(sum(entry[1] for entry in list(self._engines.values()) if entry[2]))


_groups: dict[str, _PoolGroup] = {}


def _group(label: str) -> _PoolGroup:
    if label not in metrics.POOLS:
        raise ValueError(f"pool {label!r} is not one of {', '.join(metrics.POOLS)}")
    group = _groups.get(label)
    if group is None:
        group = _groups[label] = _PoolGroup(label)
    return group


def instrument_engine(engine: AsyncEngine, pool: str = "primary", max_connections: int = 0) -> None:
    """Measure and trace every statement of ``engine``; count its pool under ``pool``
    (primary or replica; several replica engines add up)."""
    sync_engine = engine.sync_engine
    system = sync_engine.dialect.name
    histograms = metrics.db_query_histograms()
    statements = _Statements()
    group = _group(pool)
    group.add(sync_engine, max_connections or _pool_capacity(sync_engine.pool))
    tracing = STATE

    Observed = tuple[float, Any, str]

    def start(statement: str) -> Observed:
        operation, name, text = statements.get(statement)
        span = tracing.tracer.start_span(
            name, kind=SpanKind.CLIENT,
            attributes={"db.system": system, "db.operation": operation, "db.statement": text},
        )
        return time.perf_counter(), span, operation

    def finish(observed: Observed, error: type[BaseException] | None) -> None:
        started, span, operation = observed
        histograms[operation].observe(time.perf_counter() - started)
        if error is not None:
            # The type only: driver messages can quote the values of the failing row.
            span.set_status(Status(StatusCode.ERROR, error.__name__))
        span.end()

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any,
               _many: bool) -> None:
        setattr(context, _ATTR, start(statement))

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any,
              _many: bool) -> None:
        observed = getattr(context, _ATTR, None)
        if observed is not None:
            setattr(context, _ATTR, None)
            finish(observed, None)

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        observed = getattr(context, _ATTR, None) if context is not None else None
        if observed is not None:
            setattr(context, _ATTR, None)
            finish(observed, type(exception_context.original_exception))

    def checked_out(*_args: Any) -> None:
        count = getattr(sync_engine.pool, "checkedout", None)  # read again: dispose() replaces it
        if count is not None:
            group.update(sync_engine, count())

    def checked_in(*_args: Any) -> None:
        count = getattr(sync_engine.pool, "checkedout", None)
        if count is not None:  # the event fires before the pool takes the connection back
            group.update(sync_engine, max(0, count() - 1))

    def disposed(*_args: Any) -> None:
        group.disposed(sync_engine)

    class DriverStatement:
        """One statement sent on the driver (``with observe(statement):``)."""

        __slots__ = ("_observed",)

        def __init__(self, statement: str) -> None:
            self._observed = start(statement)

        def __enter__(self) -> None:
            return None

        def __exit__(self, error: type[BaseException] | None, *_: Any) -> None:
            finish(self._observed, error)

    observe_statements(sync_engine, DriverStatement)
    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)
    event.listen(sync_engine, "checkout", checked_out)
    event.listen(sync_engine, "checkin", checked_in)
    event.listen(sync_engine, "engine_disposed", disposed)


def _pool_capacity(pool: Any) -> int:
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", 0)
    return int(size() + max(0, overflow)) if callable(size) else 0
