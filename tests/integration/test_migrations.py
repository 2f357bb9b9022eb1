"""Every revision upgrades and downgrades cleanly, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from favorites.adapters.db import migrate
from favorites.adapters.db.engine import async_url
from favorites.adapters.db.tables import metadata
from tests.conftest import drop_postgres, fresh_postgres_url

TABLES = {"favorites", "products", "refresh_tokens", "revoked_tokens", "audit_log",
          "cache_epoch"}


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url))
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    await engine.dispose()
    return names - {"alembic_version"}


async def _indexes(url: str) -> set[str]:
    engine = create_async_engine(async_url(url))
    async with engine.connect() as conn:
        names = await conn.run_sync(
            lambda c: {i["name"] for i in sa.inspect(c).get_indexes("favorites")})
    await engine.dispose()
    return {n for n in names if n}


def _round_trip(url: str) -> None:
    migrate.upgrade(url)
    assert asyncio.run(_tables(url)) == TABLES
    assert {"ix_favorites_product_id", "ix_favorites_user_created"} <= asyncio.run(_indexes(url))
    migrate.downgrade(url, "base")
    assert asyncio.run(_tables(url)) == set()
    migrate.upgrade(url)
    assert asyncio.run(_tables(url)) == TABLES


def test_sqlite_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_postgres_upgrade_downgrade_upgrade() -> None:
    name, url = fresh_postgres_url("favorites_migration")
    try:
        _round_trip(url)
    finally:
        drop_postgres(name)


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(async_url(url))

    def compare(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        diff = await conn.run_sync(compare)
    await engine.dispose()
    # Alembic compares the descending (expression) index only approximately; it is checked
    # by its definition in test_keyset_index_definition instead.
    return [d for d in diff if not (isinstance(d, tuple) and
                                    getattr(d[1], "name", "") == "ix_favorites_user_created")]


def test_migrations_match_the_table_definitions(database_url: str) -> None:
    """The repositories' tables.py and the migrations describe the same schema."""
    assert asyncio.run(_diff(database_url)) == []


async def _indexdef(url: str) -> str:
    engine = create_async_engine(async_url(url))
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_favorites_user_created'"
        ))).scalar_one()
    await engine.dispose()
    return str(row)


def test_keyset_index_definition(postgres_url: str) -> None:
    definition = asyncio.run(_indexdef(postgres_url))
    assert "(user_id, created_at DESC, product_id)" in definition
