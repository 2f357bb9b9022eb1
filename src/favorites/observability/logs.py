"""Structured JSON logs in the seed's format, configured once at start-up.

Every line is one JSON object whose first keys are always, in this order::

    timestamp level service requestId userId operation productId durationMs message
    method path status traceId

(``null`` where a fact is unknown, e.g. ``requestId`` outside a request). A line with an exception
adds ``stackTrace``; lines from other libraries through ``logging`` may add their own extra fields
(and ``logger``). Levels are the seed's: DEBUG, INFO, WARN, ERROR, CRITICAL.

structlog is configured with one processor, ``render_json``; the standard library (uvicorn,
SQLAlchemy, ``logging.getLogger(...)`` in this code base) is routed through the same processor by
a ``ProcessorFormatter`` on the root logger; the two lines of every request (request and business
operation) use ``log_request_event``, which skips structlog's generic dispatch but shares its
level, fields, redaction and rendering. Lines go to ``sys.stdout``, looked up at write time (so
test capture and uvicorn both see them). WARN and worse, and every ``logging`` line, are flushed
at once; DEBUG and INFO lines in batches (see ``_StdoutLogger`` and ``STDOUT_BUFFER_BYTES``).

Each exception's stack trace is logged once: after a line carried it, the exception is marked and
a later ``logging`` record of the same exception (the edge middleware's "unhandled error") is
dropped, while a later structlog line still appears, without the trace.
"""

from __future__ import annotations

import contextlib
import io
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
_NUMBERED_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
                    logging.ERROR: "ERROR", logging.CRITICAL: "CRITICAL"}
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
        user_id = product_id = method = None
        path = pop("path", None)
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
    """The one processor of every line: shape it, take out anything secret, render it."""
    return _finish(shape(_logger, method_name, event))


def _finish(out: dict[str, Any]) -> str:
    """Redact and render a shaped line (with its newline).

    Redaction (see ``redaction``): every text field is checked for credential-looking values
    (the message, the request id a client may choose, whatever a caller passed as userId...),
    except the ones this module writes itself; extra fields by name as well; so is the stack
    trace.
    """
    for key in _SCANNED:
        value = out[key]
        if isinstance(value, str) and (_HINT_0 in value or _HINT_1 in value or _HINT_2 in value):
            out[key] = scrub(value)
    if len(out) > len(FIELDS):
        redact(out, _NOT_SCANNED_EXTRAS)
    return orjson.dumps(out, default=_default, option=orjson.OPT_APPEND_NEWLINE).decode()


def log_request_event(
    level: int, message: str, operation: str, *, user_id: Any, product_id: Any,
    duration_ms: float, status: int | None, path: str | None,
    exc_info: BaseException | None = None,
) -> None:
    """The request line and the business-operation lines: two per request, so they skip
    structlog's generic dispatch and shaping, not its configuration: the level set by
    ``configure_logging``, the same fields, redaction and renderer (``_finish``), the same
    output. Outside a request they go through structlog like any line."""
    if level < _state.level:
        return
    ctx = current_request.get()
    if ctx is None:
        structlog.get_logger().log(level, message, operation=operation, userId=user_id,
                                   productId=product_id, durationMs=duration_ms, status=status,
                                   path=path, exc_info=exc_info)
        return
    out: dict[str, Any] = {
        "timestamp": _clock.now(),
        "level": _NUMBERED_LEVELS.get(level, "INFO"),
        "service": SERVICE,
        "requestId": ctx.request_id,
        "userId": user_id,
        "operation": operation,
        "productId": product_id,
        "durationMs": duration_ms,
        "message": message,
        "method": ctx.method,
        "path": path or ctx.path,
        "status": status,
        "traceId": ctx.trace_id,
    }
    if exc_info is not None:
        stack = _stack_trace(exc_info)
        if stack is not None:
            out["stackTrace"] = stack
    line = _finish(out)
    stream = sys.stdout
    stream.write(line)
    if level >= logging.WARNING:
        stream.flush()


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


class _State:
    level = logging.INFO


_state = _State()


#: A pipe's own buffer size (4 KiB) would mean a write and a wake-up of the reader every ten
#: lines; when stdout is a pipe or file, lines are written out in chunks this large instead.
STDOUT_BUFFER_BYTES = 64 * 1024


def _larger_stdout_buffer() -> None:
    """Give the process's own stdout (a pipe or file, not a terminal, not a test's capture) a
    larger buffer. Python flushes it at exit; ``flush_logs`` and WARN+ lines flush it sooner."""
    stream = sys.stdout
    if stream is not sys.__stdout__ or stream is None or stream.isatty():
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    stream.flush()
    raw = io.FileIO(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw, STDOUT_BUFFER_BYTES),
                                  encoding="utf-8", errors="backslashreplace")


def configure_logging(level: str = "INFO") -> None:
    """Route structlog and ``logging`` to JSON on stdout at ``level`` (idempotent)."""
    number = level_number(level)
    _state.level = number
    _larger_stdout_buffer()
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
