"""Alembic driven from code, so ``favorites migrate`` works from an installed wheel too."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def schema_behind(url: str) -> str | None:
    """Why the database's schema is too old for this version, or None when it is at or past
    this version's head (a newer version's expand-only migrations leave it usable: blue and
    green share one schema). Raises what connecting raises: the caller decides whether a
    database it cannot reach yet stops it."""
    from alembic.script import ScriptDirectory

    revision = current_revision(url)
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    if revision == head:
        return None
    if revision is None:
        return "it has no schema yet"
    known = {rev.revision for rev in script.walk_revisions()}
    if revision not in known:
        return None  # a newer version migrated it
    return f"its schema is at revision {revision}, this version needs {head}"


def current_revision(url: str) -> str | None:
    """The database's schema revision; None before the first migration."""
    import asyncio

    from alembic.runtime.migration import MigrationContext

    from favorites.adapters.db.engine import PoolSettings, create_engine

    async def current() -> str | None:
        engine = create_engine(url, PoolSettings(1, 1, 5000))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(current())
