"""Structured JSON logs in the seed's format, configured once at start-up.

Every line is one JSON object whose first keys are always, in this order::

    timestamp level service requestId userId operation productId durationMs message
    method path status traceId

(``null`` where a fact is unknown, e.g. ``requestId`` outside a request). A line with an exception
adds ``stackTrace``; lines from other libraries through ``logging`` may add their own extra fields
(and ``logger``). Levels are the seed's: DEBUG, INFO, WARN, ERROR, CRITICAL.

structlog renders our own lines (the request and business-operation lines) directly; the standard
library (uvicorn, SQLAlchemy, ``logging.getLogger(...)`` in this code base) is routed through the
same processor (``render_json``) by a ``ProcessorFormatter`` on the root logger. Lines go to
``sys.stdout``, looked up at write time (so test capture and uvicorn both see them). WARN and
worse, and every ``logging`` line, are flushed at once; DEBUG/INFO lines of structlog are flushed
in batches (see ``_StdoutLogger``).

Each exception's stack trace is logged once: after a line carried it, the exception is marked and
a later ``logging`` record of the same exception (the edge middleware's "unhandled error") is
dropped, while a later structlog line still appears, without the trace.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import orjson
import structlog
from opentelemetry import trace

from favorites.observability.context import current_request
from favorites.observability.redaction import HINTS, redact, scrub

SERVICE = "favorites-service"
#: The keys of every line, in order: the seed's, then method/path/status/traceId.
FIELDS = ("timestamp", "level", "service", "requestId", "userId", "operation", "productId",
          "durationMs", "message", "method", "path", "status", "traceId")
#: Fixed fields that may hold text from elsewhere; the others are written by this module.
_SCANNED = ("requestId", "userId", "operation", "productId", "message", "method", "path")
#: When a line has extra fields, everything but these (checked above, or made by this code) is.
_NOT_SCANNED_EXTRAS = frozenset(FIELDS) | {"logger"}
_HINT_0, _HINT_1, _HINT_2 = HINTS
_LEVELS = {"debug": "DEBUG", "trace": "DEBUG", "info": "INFO", "warning": "WARN", "warn": "WARN",
           "error": "ERROR", "exception": "ERROR", "critical": "CRITICAL", "fatal": "CRITICAL"}
#: Attribute set on an exception once its stack trace is in the log.
LOGGED_MARK = "_favorites_stack_logged"
#: Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message", "asctime", "color_message", "taskName",
}
_HANDLER_MARK = "_favorites_json_handler"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class _Clock:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((now - second) * 1000):03d}Z"


_clock = _Clock()


def _exc_info(value: Any) -> ExcInfo | None:
    if value is True:
        info = sys.exc_info()
        return None if info[1] is None else info
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[1] is not None:
        return value
    return None


def _stack_trace(value: Any) -> str | None:
    """The formatted traceback, unless this exception's trace was logged already."""
    info = _exc_info(value)
    if info is None:
        return None
    error = info[1]
    if getattr(error, LOGGED_MARK, False):
        return None
    # An exception type with __slots__ cannot be marked: its trace may then be logged twice.
    with contextlib.suppress(AttributeError):
        setattr(error, LOGGED_MARK, True)
    return "".join(traceback.format_exception(*info)).rstrip()


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def shape(_logger: Any, method_name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Build the line: fixed keys first (a caller's value, else the request's), extras after."""
    pop = event.pop
    ctx = current_request.get()
    method: str | None
    path: str | None
    trace_id: str | None
    if ctx is not None:
        request_id, trace_id = ctx.request_id, ctx.trace_id
        user_id, product_id, method = ctx.user_id, ctx.product_id, ctx.method
        path = pop("path", None) or ctx.path
    else:
        request_id, trace_id = pop("requestId", None), pop("traceId", None)
        user_id = product_id = method = path = None
        if trace_id is None:
            trace_id = _current_trace_id()
    message = pop("event", None)
    out: dict[str, Any] = {
        "timestamp": _clock.now(),
        "level": _LEVELS.get(method_name, "INFO"),
        "service": SERVICE,
        "requestId": request_id,
        "userId": pop("userId", user_id),
        "operation": pop("operation", None),
        "productId": pop("productId", product_id),
        "durationMs": pop("durationMs", None),
        "message": message if isinstance(message, str) or message is None else str(message),
        "method": pop("method", method),
        "path": path,
        "status": pop("status", None),
        "traceId": trace_id,
    }
    exc_info = pop("exc_info", None)
    if event:
        pop("stack_info", None)
        pop("requestId", None)
        pop("traceId", None)
        for key, value in event.items():
            if not key.startswith("_"):
                out[key] = value
    if exc_info is not None:
        stack = _stack_trace(exc_info)
        if stack is not None:
            out["stackTrace"] = stack
    return out


def _default(value: Any) -> str:
    return str(value)


def render_json(_logger: Any, method_name: str, event: MutableMapping[str, Any]) -> str:
    """The one processor of every line: shape it, take out anything secret, render it.

    Redaction (see ``redaction``): every text field is checked for credential-looking values
    (the message, the request id a client may choose, whatever a caller passed as userId...),
    except the ones this module writes itself; extra fields by name as well; so is the stack
    trace.
    """
    out = shape(_logger, method_name, event)
    for key in _SCANNED:
        value = out[key]
        if isinstance(value, str) and (_HINT_0 in value or _HINT_1 in value or _HINT_2 in value):
            out[key] = scrub(value)
    if len(out) > len(FIELDS):
        redact(out, _NOT_SCANNED_EXTRAS)
    return orjson.dumps(out, default=_default, option=orjson.OPT_APPEND_NEWLINE).decode()


def _stdlib_fields(
    _logger: Any, _method_name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Lift ``extra=`` fields of a ``logging`` record into the event, plus the logger name."""
    record: logging.LogRecord = event["_record"]
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key.startswith("_"):
            continue
        # ``event`` is structlog's message key; a caller's ``extra={"event": ...}`` is renamed.
        event["eventType" if key == "event" else key] = value
    event["logger"] = record.name
    return event


class _StdoutLogger:
    """structlog's output: one line to the current ``sys.stdout`` per call.

    DEBUG and INFO lines (two per request) are left in the stream's buffer, flushed by
    ``flush_logs`` every ``FLUSH_SECONDS`` in a served app, by any WARN or worse line, by
    ``logging``'s lines and at exit: a system call and a wake-up of the log collector per
    ~8 KiB instead of per line. A process killed outright loses at most that buffer of INFO.
    """

    __slots__ = ()

    def msg(self, message: str) -> None:
        sys.stdout.write(message)  # rendered with its newline

    def urgent(self, message: str) -> None:
        stream = sys.stdout
        stream.write(message)
        stream.flush()

    debug = info = msg
    warning = warn = error = critical = exception = fatal = failure = urgent


#: How stale buffered INFO lines may get in a served app.
FLUSH_SECONDS = 0.25


def flush_logs() -> None:
    sys.stdout.flush()


def _logger_factory(*_args: Any) -> _StdoutLogger:
    return _StdoutLogger()


class JsonHandler(logging.Handler):
    """The root logger's only handler of ours: ``logging`` records as the same JSON lines."""

    def __init__(self, level: int | str = logging.NOTSET):
        super().__init__(level)
        setattr(self, _HANDLER_MARK, True)
        self.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_stdlib_fields],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        render_json],
        ))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and getattr(record.exc_info[1], LOGGED_MARK, False):
            return False  # its stack trace is already in the log, with request id and trace id
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)  # rendered with its newline
            stream = sys.stdout
            stream.write(line)
            stream.flush()
        except Exception:
            self.handleError(record)


def level_number(level: str) -> int:
    """``DEBUG``/``INFO``/``WARN``/``WARNING``/... as a ``logging`` level (INFO if unknown)."""
    name = level.strip().upper()
    return logging.getLevelNamesMapping().get("WARNING" if name == "WARN" else name, logging.INFO)


#: Loggers that other code configures with their own handlers; ours propagate to the root.
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
_QUIET_BELOW_DEBUG = ("httpx", "httpcore")
#: Two lines per database call with the bound values, from a thread without the request's ids.
_ALWAYS_QUIET = ("aiosqlite",)


def configure_logging(level: str = "INFO") -> None:
    """Route structlog and ``logging`` to JSON on stdout at ``level`` (idempotent)."""
    number = level_number(level)
    structlog.configure(
        processors=[render_json],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=_logger_factory,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.addHandler(JsonHandler())
    root.setLevel(number)
    for name in _TAKEN_OVER:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]
        logger.propagate = True
    for name in _QUIET_BELOW_DEBUG:  # one INFO line per outgoing HTTP call, URL included
        logging.getLogger(name).setLevel(logging.NOTSET if number <= logging.DEBUG
                                         else logging.WARNING)
    for name in _ALWAYS_QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")  # the observability middleware logs requests
    access.handlers = []
    access.propagate = False


def get_logger() -> Any:
    """A concrete structlog logger bound to the current configuration (for hot paths)."""
    return structlog.get_logger().bind()


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """``uvicorn.run(log_config=...)``: uvicorn's own lines in the same JSON, in every worker."""
    name = logging.getLevelName(level_number(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": f"{__name__}.JsonHandler"}},
        "root": {"handlers": ["json"], "level": name},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": name},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": name},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
