"""Shared fixtures: real SQLite and PostgreSQL databases, migrated with Alembic, once a session."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from favorites.adapters.db import migrate
from favorites.config import ServiceClient, Settings
from favorites.entrypoints.http.app import create_app

PG_ADMIN_URL = os.environ.get("FAVORITES_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "test-secret-" + "x" * 40
SERVICE_KEY = "test-service-key-all-scopes"
NARROW_KEY = "test-service-key-products-only"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """For settings tests: an empty working directory (for ``.env`` and the data directory) and
    no FAVORITES_* variables from the shell that runs the suite."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("FAVORITES_"):
            monkeypatch.delenv(name)
    return tmp_path


def service_clients() -> list[ServiceClient]:
    return [
        ServiceClient(name="identity", key_sha256=hashlib.sha256(SERVICE_KEY.encode()).hexdigest(),
                      cidrs=("127.0.0.0/8",),  # type: ignore[arg-type]
                      scopes=frozenset({"tokens:issue", "users:erase", "products:write"})),
        ServiceClient(name="catalog", key_sha256=hashlib.sha256(NARROW_KEY.encode()).hexdigest(),
                      cidrs=("127.0.0.0/8",),  # type: ignore[arg-type]
                      scopes=frozenset({"products:write"})),
    ]


def make_settings(database_url: str, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp,
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        "service_clients": service_clients(),
        "database_pool_min": 2,
        "database_pool_max": 10,  # kept open per app: several apps share one PostgreSQL
        # Functional tests share one client address and make hundreds of requests a minute;
        # the limit itself is tested with explicit low limits (tests/security/test_rate_limit.py).
        "rate_limit": "100000/minute",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def fresh_postgres_url(prefix: str = "favorites_test") -> tuple[str, str]:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(name))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_postgres(name: str) -> None:
    asyncio.run(_drop_database(name))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, migrated to head, dropped afterwards."""
    name, url = fresh_postgres_url()
    migrate.upgrade(url)
    yield url
    drop_postgres(name)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'favorites.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test that takes this runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://favorites.test") as c:
            yield c


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def client(database_url: str, session_tmp: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client against the app on each backend; tests isolate by random ids."""
    app = create_app(make_settings(database_url, session_tmp))
    async for c in started(app):
        c.app = app  # type: ignore[attr-defined]
        yield c
