"""Fixtures for the observability tests: an app whose spans land in memory, captured log lines,
and no global logging/tracing configuration leaking into other tests."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from favorites.entrypoints.http.app import create_app
from favorites.observability import logs, tracing
from tests.conftest import make_settings, started


def _ours(handler: logging.Handler) -> bool:
    return isinstance(handler, logs.JsonHandler)


@pytest.fixture(autouse=True)
def _isolated_observability() -> Iterator[None]:
    """Put back the logging and tracing configuration a test changed (levels, exporters)."""
    root = logging.getLogger()
    handlers, level = [h for h in root.handlers if _ours(h)], root.level
    structlog_config = structlog.get_config()
    yield
    structlog.configure(**structlog_config)
    for handler in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    tracing.configure_tracing(from_env=False)  # tracing on, exporting nowhere (the default)


def log_lines(text: str) -> list[dict[str, Any]]:
    """Every JSON log line of captured output (other output, if any, is skipped)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@dataclass
class Observed:
    """An app on a real database with its spans kept in memory."""

    client: httpx.AsyncClient
    app: FastAPI
    spans: InMemorySpanExporter

    def finished_spans(self) -> list[ReadableSpan]:
        assert tracing.force_flush()
        return list(self.spans.get_finished_spans())


async def observed_app(
    database_url: str, tmp: Path, *, ratio: float = 1.0, app: FastAPI | None = None,
    **overrides: Any,
) -> AsyncIterator[Observed]:
    app = app or create_app(make_settings(database_url, tmp, **overrides))
    exporter = InMemorySpanExporter()
    async for client in started(app):
        tracing.configure_tracing(exporter, ratio=ratio, from_env=False)
        yield Observed(client, app, exporter)


@pytest.fixture
async def observed(sqlite_url: str, session_tmp: Path) -> AsyncIterator[Observed]:
    """Every trace kept (ratio 1), SQLite: for tests of content rather than of sampling."""
    async for item in observed_app(sqlite_url, session_tmp):
        yield item
