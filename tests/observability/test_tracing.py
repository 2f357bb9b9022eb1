"""Tracing: W3C propagation in and out, request/database/cache spans, and the sampling rule
(10 % of normal traces, every trace with an error or a 5xx)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from favorites.config import ConfigError
from favorites.observability import tracing
from favorites.observability.db import sanitize
from favorites.observability.sampling import TailSamplingSpanProcessor
from tests.helpers import bearer, new_product
from tests.observability.conftest import Observed, log_lines, observed_app

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


def by_trace(spans: list[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


def server_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is SpanKind.SERVER]


@pytest.fixture
async def db_observed(database_url: str, session_tmp: Path) -> AsyncIterator[Observed]:
    """SQLite and PostgreSQL, every trace kept."""
    async for item in observed_app(database_url, session_tmp):
        yield item


async def test_an_incoming_traceparent_is_continued_in_spans_logs_and_the_response(
    db_observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    user = uuid.uuid4()
    response = await db_observed.client.get(
        "/v1/users/me/favorites", headers={**bearer(user),
                                           "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                                           "tracestate": "vendor=abc"})
    assert response.status_code == 200
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != PARENT_ID
    lines = [line for line in log_lines(capsys.readouterr().out)
             if line["requestId"] == response.headers["x-request-id"]]
    assert lines
    assert {line["traceId"] for line in lines} == {TRACE_ID}

    spans = by_trace(db_observed.finished_spans())[int(TRACE_ID, 16)]
    (server,) = server_spans(spans)
    assert server.name == "GET /v1/users/{user_id}/favorites"
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.context is not None
    assert format(server.context.span_id, "016x") == span_id
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/users/{user_id}/favorites"
    assert server.attributes["http.response.status_code"] == 200
    assert server.context.trace_state.get("vendor") == "abc"
    database = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert database, "one span per statement"
    for span in database:
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert span.attributes is not None
        assert span.attributes["db.system"] in ("sqlite", "postgresql")
        statement = str(span.attributes["db.statement"])
        assert str(user) not in statement
        assert user.hex not in statement
    assert any("SELECT" in str((span.attributes or {})["db.statement"]) for span in database)


async def test_without_a_valid_traceparent_a_new_trace_starts(observed: Observed) -> None:
    for header in ("garbage", f"00-{'0' * 32}-{PARENT_ID}-01", f"ff-{TRACE_ID}-{PARENT_ID}-01",
                   f"00-{TRACE_ID}-{PARENT_ID}-01-extra"):
        response = await observed.client.get("/health/live", headers={"traceparent": header})
        trace_id = response.headers["traceparent"].split("-")[1]
        assert trace_id != TRACE_ID
        assert trace_id != "0" * 32


async def test_outgoing_calls_carry_the_trace(observed: Observed) -> None:
    async def call_out() -> JSONResponse:
        headers: dict[str, str] = {}
        tracing.inject_headers(headers)
        return JSONResponse(headers)

    observed.app.add_api_route("/test/call-out", call_out)
    response = await observed.client.get(
        "/test/call-out", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    outgoing = response.json()["traceparent"]
    assert outgoing.split("-")[1] == TRACE_ID
    assert outgoing.endswith("-01")  # the caller sampled it: so does the next hop
    own_span = response.headers["traceparent"].split("-")[2]
    assert outgoing.split("-")[2] == own_span  # the server span is the next hop's parent
    headers: dict[str, str] = {}
    tracing.inject_headers(headers)  # outside any span: nothing to propagate
    assert headers == {}


async def test_cache_spans_are_children_and_failures_are_marked(observed: Observed) -> None:
    async def cached() -> dict[str, str]:
        with tracing.cache_span("favorites_page", "get"):
            pass
        with pytest.raises(ConnectionError), tracing.cache_span("favorites_count", "set"):
            raise ConnectionError("redis://secret@host down")
        return {}

    observed.app.add_api_route("/test/cached", cached)
    response = await observed.client.get("/test/cached")
    trace_id = int(response.headers["traceparent"].split("-")[1], 16)
    spans = by_trace(observed.finished_spans())[trace_id]
    cache = {span.name: span for span in spans if span.name.startswith("cache ")}
    assert set(cache) == {"cache get", "cache set"}
    assert cache["cache get"].status.status_code is StatusCode.UNSET
    assert cache["cache set"].status.status_code is StatusCode.ERROR
    assert cache["cache set"].status.description == "ConnectionError"
    assert not cache["cache set"].events  # no exception message (it may hold credentials)


def test_statements_are_sanitized() -> None:
    assert sanitize("SELECT a FROM t WHERE x = $1 AND y = 'abc' AND z = 42") == \
        "SELECT a FROM t WHERE x = $1 AND y = ? AND z = ?"
    assert sanitize("UPDATE t SET v=? WHERE id = :id_1") == "UPDATE t SET v=? WHERE id = :id_1"
    assert sanitize("SELECT favorites_1.user_id\nFROM favorites AS favorites_1") == \
        "SELECT favorites_1.user_id FROM favorites AS favorites_1"


# -- sampling ---------------------------------------------------------------------------------


async def test_ten_percent_of_normal_traces_and_every_error_trace_are_kept(
    sqlite_url: str, session_tmp: Path
) -> None:
    async for item in observed_app(sqlite_url, session_tmp, ratio=0.1):
        async def explode() -> None:
            raise RuntimeError("boom")

        async def unavailable() -> JSONResponse:
            return JSONResponse({}, status_code=503)

        item.app.add_api_route("/test/explode", explode)
        item.app.add_api_route("/test/unavailable", unavailable)
        normal, errors = set(), set()
        for _ in range(2000):
            response = await item.client.get("/health/live")
            normal.add(response.headers["traceparent"].split("-")[1])
        for index in range(200):
            response = await item.client.get(
                "/test/explode" if index % 2 else "/test/unavailable")
            assert response.status_code in (500, 503)
            errors.add(response.headers["x-request-id"])
        exported = server_spans(item.finished_spans())
    kept_normal = [s for s in exported if s.name == "GET /health/live"]
    kept_errors = [s for s in exported if s.name in ("GET /test/explode",
                                                     "GET /test/unavailable")]
    assert len(normal) == 2000
    # Binomial(2000, 0.1): mean 200, standard deviation 13.4; this is about 4.5 sigma each way.
    assert 140 <= len(kept_normal) <= 260, len(kept_normal)
    assert len(kept_errors) == 200
    assert {span.status.status_code for span in kept_errors} == {StatusCode.ERROR}


async def test_traces_the_caller_sampled_are_always_kept(sqlite_url: str,
                                                         session_tmp: Path) -> None:
    async for item in observed_app(sqlite_url, session_tmp, ratio=0.0):
        sampled = [uuid.uuid4().hex for _ in range(20)]
        for trace_id in sampled:
            await item.client.get("/health/live",
                                  headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"})
        for _ in range(20):
            await item.client.get("/health/live",
                                  headers={"traceparent": f"00-{uuid.uuid4().hex}-{PARENT_ID}-00"})
        kept = {format(s.context.trace_id, "032x") for s in item.finished_spans()
                if s.context is not None}
    assert kept == set(sampled)


def _tail(ratio: float) -> tuple[trace.Tracer, InMemorySpanExporter, TailSamplingSpanProcessor]:
    exporter = InMemorySpanExporter()
    sampler = TailSamplingSpanProcessor(SimpleSpanProcessor(exporter), ratio, max_traces=3)
    provider = TracerProvider(sampler=ALWAYS_ON)  # record everything, as the service does
    provider.add_span_processor(sampler)
    return provider.get_tracer("test"), exporter, sampler


def _remote(trace_id: int, sampled: bool = False) -> trace.Span:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=flags))


def test_the_decision_is_taken_when_the_local_root_ends() -> None:
    tracer, exporter, _ = _tail(0.5)
    inside = (1 << 64) // 4  # lower 64 bits below ratio * 2**64: in the 50 %
    outside = (1 << 64) - 1
    for trace_id in (inside, outside):
        context = trace.set_span_in_context(_remote(trace_id))
        root = tracer.start_span("root", context=context)
        child = tracer.start_span("child", context=trace.set_span_in_context(root))
        child.end()
        assert exporter.get_finished_spans() == () or trace_id == outside
        root.end()
    kept = {span.context.trace_id for span in exporter.get_finished_spans() if span.context}
    assert kept == {inside}
    assert len(exporter.get_finished_spans()) == 2  # the child waited for its root


def test_an_error_anywhere_in_the_trace_keeps_all_of_it() -> None:
    tracer, exporter, _ = _tail(0.0)
    root = tracer.start_span("root", context=trace.set_span_in_context(_remote((1 << 64) - 1)))
    child = tracer.start_span("db", context=trace.set_span_in_context(root))
    child.set_status(StatusCode.ERROR)
    child.end()
    ok = tracer.start_span("ok", context=trace.set_span_in_context(root))
    ok.end()
    root.end()
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["db", "ok", "root"]


def test_spans_that_end_after_their_root_follow_its_decision() -> None:
    tracer, exporter, _ = _tail(0.0)
    kept_root = tracer.start_span("kept", context=trace.set_span_in_context(_remote(5, True)))
    dropped_root = tracer.start_span("dropped", context=trace.set_span_in_context(_remote(6)))
    late_kept = tracer.start_span("late", context=trace.set_span_in_context(kept_root))
    late_dropped = tracer.start_span("late", context=trace.set_span_in_context(dropped_root))
    kept_root.end()
    dropped_root.end()
    late_kept.end()
    late_dropped.end()
    names = sorted((span.name, span.context.trace_id) for span in exporter.get_finished_spans()
                   if span.context)
    assert names == [("kept", 5), ("late", 5)]


def test_traces_kept_for_the_callers_flag_alone_are_bounded_per_second() -> None:
    """Any client can send a traceparent with the sampled flag: it does not buy it an export
    of every request. Errors and the ratio are kept whatever the flag's budget."""
    now = [0.0]
    exporter = InMemorySpanExporter()
    sampler = TailSamplingSpanProcessor(SimpleSpanProcessor(exporter), 0.0,
                                        upstream_per_second=10, clock=lambda: now[0])
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(sampler)
    tracer = provider.get_tracer("test")

    def flagged(trace_id: int, error: bool = False) -> None:
        root = tracer.start_span("root", context=trace.set_span_in_context(_remote(trace_id, True)))
        if error:
            root.set_status(StatusCode.ERROR)
        root.end()

    for trace_id in range(1, 101):  # a hundred in the same instant
        flagged(trace_id)
    flagged(1000, error=True)
    assert len(exporter.get_finished_spans()) == 11  # ten for the flag, and the error
    now[0] = 0.5  # half a second refills half the budget
    for trace_id in range(101, 201):
        flagged(trace_id)
    assert len(exporter.get_finished_spans()) == 16


def test_open_traces_are_bounded() -> None:
    tracer, exporter, sampler = _tail(1.0)
    roots = [tracer.start_span("root", context=trace.set_span_in_context(_remote(i + 1)))
             for i in range(5)]
    for root in roots:
        tracer.start_span("child", context=trace.set_span_in_context(root)).end()
    assert sampler.evicted == 2  # max_traces=3: the two oldest open traces were dropped
    for root in roots:
        root.end()
    assert len(exporter.get_finished_spans()) == 5 + 3


# -- configuration ----------------------------------------------------------------------------


def test_export_only_when_an_otlp_endpoint_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.exporter_from_env() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:18199/v1/traces")
    exporter = tracing.exporter_from_env()
    assert type(exporter).__name__ == "OTLPSpanExporter"
    assert exporter is not None
    exporter.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.exporter_from_env() is None


def test_the_ratio_comes_from_otel_traces_sampler_arg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    assert tracing.ratio_from_env() == 0.1
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert tracing.ratio_from_env() == 0.25
    for bad in ("lots", "1.5", "-0.1"):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", bad)
        with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
            tracing.ratio_from_env()


async def test_trace_ids_are_logged_even_with_tracing_switched_off(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    tracing.shutdown_tracing()  # a no-op tracer, as before start-up
    product = await new_product(observed.client)
    response = await observed.client.get(f"/v1/products/{product}/favorites/count",
                                         headers={**bearer(uuid.uuid4()),
                                                  "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert response.headers["traceparent"].split("-")[1] == TRACE_ID
    lines = [line for line in log_lines(capsys.readouterr().out)
             if line["requestId"] == response.headers["x-request-id"]]
    assert {line["traceId"] for line in lines} == {TRACE_ID}
    fresh = await observed.client.get("/health/live")
    assert len(fresh.headers["traceparent"].split("-")[1]) == 32
