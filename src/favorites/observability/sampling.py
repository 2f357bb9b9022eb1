"""Tail sampling: keep 10 % of normal traces and every trace with an error or a 5xx.

A head sampler decides when a trace starts and cannot know how it ends, so every span is recorded
and the decision is taken when the trace's *local root* span (the server span, or any span whose
parent is remote or absent) ends. Until then the trace's finished spans wait here. The trace is
forwarded to the exporter's ``BatchSpanProcessor`` when

- any of its spans has status ERROR, or the root has ``http.response.status_code`` >= 500;
- the caller sampled it (incoming ``traceparent`` with the sampled flag, W3C), so a distributed
  trace is not cut at our hop, up to ``upstream_per_second`` such traces a second: any client
  can set the flag, and would otherwise choose to have every one of its requests exported; or
- its trace id falls in the ratio (the lower 64 bits below ``ratio * 2**64``, the same rule as
  OpenTelemetry's ``TraceIdRatioBased``, so every service keeps the same traces).

Memory is bounded: at most ``max_traces`` open traces (the oldest is dropped past that) with at
most ``max_spans`` spans each; spans that end after their root follow the root's decision,
remembered for the last ``remember`` traces.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

_LOWER_64 = (1 << 64) - 1


def ratio_bound(ratio: float) -> int:
    """Trace ids whose lower 64 bits are below this bound fall in the ratio."""
    return round(min(max(ratio, 0.0), 1.0) * (1 << 64))


def in_ratio(trace_id: int, bound: int) -> bool:
    return (trace_id & _LOWER_64) < bound


def _errored(span: ReadableSpan) -> bool:
    if span.status.status_code is StatusCode.ERROR:
        return True
    status = (span.attributes or {}).get("http.response.status_code")
    return isinstance(status, int) and status >= 500


class _Open:
    __slots__ = ("errored", "spans")

    def __init__(self) -> None:
        self.errored = False
        self.spans: list[ReadableSpan] = []


class TailSamplingSpanProcessor(SpanProcessor):
    def __init__(
        self,
        downstream: SpanProcessor,
        ratio: float = 0.1,
        *,
        max_traces: int = 10_000,
        max_spans: int = 512,
        remember: int = 10_000,
        upstream_per_second: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._downstream = downstream
        #: A token bucket (one second's worth at most) for traces kept only for the caller's flag.
        self._upstream_rate = upstream_per_second
        self._upstream_tokens = upstream_per_second
        self._upstream_at = clock()
        self._clock = clock
        self._bound = ratio_bound(ratio)
        self._max_traces = max_traces
        self._max_spans = max_spans
        self._remember = remember
        self._open: dict[int, _Open] = {}
        self._decided: OrderedDict[int, bool] = OrderedDict()
        self._lock = threading.Lock()
        #: Traces dropped unfinished because too many were open; for tests and debugging.
        self.evicted = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        trace_id = context.trace_id
        parent = span.parent
        if parent is None or parent.is_remote:
            self._end_trace(trace_id, span, parent is not None and parent.trace_flags.sampled)
            return
        with self._lock:
            decided = self._decided.get(trace_id)
            if decided is None:
                trace = self._open.get(trace_id)
                if trace is None:
                    if len(self._open) >= self._max_traces:
                        del self._open[next(iter(self._open))]
                        self.evicted += 1
                    trace = self._open[trace_id] = _Open()
                if len(trace.spans) < self._max_spans:
                    trace.spans.append(span)
                trace.errored = trace.errored or _errored(span)
                return
        if decided:  # a span that ended after its root: follow the root's decision
            self._downstream.on_end(span)

    def _end_trace(self, trace_id: int, root: ReadableSpan, upstream_sampled: bool) -> None:
        with self._lock:
            trace = self._open.pop(trace_id, None)
            keep = (
                _errored(root)
                or (trace is not None and trace.errored)
                or in_ratio(trace_id, self._bound)
                or (upstream_sampled and self._upstream_budget())
            )
            self._decided[trace_id] = keep
            if len(self._decided) > self._remember:
                self._decided.popitem(last=False)
        if keep:
            for span in trace.spans if trace is not None else ():
                self._downstream.on_end(span)
            self._downstream.on_end(root)

    def _upstream_budget(self) -> bool:
        """One more trace kept for the caller's flag alone, if the last second allows it."""
        now = self._clock()
        self._upstream_tokens = min(self._upstream_rate, self._upstream_tokens
                                    + (now - self._upstream_at) * self._upstream_rate)
        self._upstream_at = now
        if self._upstream_tokens < 1:
            return False
        self._upstream_tokens -= 1
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._open.clear()
        self._downstream.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._downstream.force_flush(timeout_millis)
