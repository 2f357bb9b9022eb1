"""Bulk-load the bench database: ``python -m bench.seed --users 20000 --per-user 50``.

Migrates the schema (Alembic, as ``favorites migrate`` does), then in one transaction truncates
``favorites``, ``products`` and the ``audit_log``, drops the ``favorites`` indexes (primary key
included), COPY-loads both tables in PostgreSQL's binary format (asyncpg
``copy_records_to_table``), rebuilds the indexes with exactly the definitions they had (so the
schema stays what the migrations made), records the shape in ``bench_seed`` and commits. Then
``VACUUM ANALYZE`` sets statistics and the visibility map (index-only scans), as autovacuum would
on a live table.

Only databases whose name contains ``bench`` are accepted: this truncates tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.common import (
    DEFAULT_DATABASE_URL,
    SeedShape,
    admin_url,
    check_bench_database,
    database_name,
    product_id,
    user_id,
    user_product_indices,
)

#: Bumped when the generated data changes meaning (ids, per-user products), to force a reseed.
LAYOUT_VERSION = 1
_TIMESTAMPS = 65_536  # created_at values are drawn from this many instants over the last year
_CHUNK_USERS = 2_000  # users generated per batch handed to COPY

MARKER_DDL = """
CREATE TABLE IF NOT EXISTS bench_seed (
    users integer NOT NULL,
    per_user integer NOT NULL,
    products integer NOT NULL,
    layout integer NOT NULL,
    seeded_at timestamptz NOT NULL,
    seconds double precision NOT NULL
)
"""

_INDEXES_SQL = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS indexdef,
       c.conname AS constraint_name, pg_get_constraintdef(c.oid) AS constraintdef
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
WHERE x.indrelid = 'favorites'::regclass
ORDER BY c.conname IS NULL, i.relname
"""


@dataclass
class SeedReport:
    database: str
    users: int
    per_user: int
    products: int
    favorites: int
    seconds_total: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.favorites / self.seconds_total if self.seconds_total else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_per_second"] = round(self.rows_per_second)
        data["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        data["seconds_total"] = round(self.seconds_total, 3)
        return data


async def ensure_database(url: str) -> bool:
    """Create the bench database if it is missing; True when it was created."""
    check_bench_database(url)
    name = database_name(url)
    conn = await asyncpg.connect(admin_url(url))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


async def current_shape(url: str) -> SeedShape | None:
    """The shape recorded by the last complete seed of this layout, or None."""
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_seed') IS NOT NULL"):
            return None
        row = await conn.fetchrow(
            "SELECT users, per_user, products FROM bench_seed WHERE layout = $1 "
            "ORDER BY seeded_at DESC LIMIT 1", LAYOUT_VERSION)
        if row is None or not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM favorites)"):
            return None
        return SeedShape(row["users"], row["per_user"], row["products"])
    finally:
        await conn.close()


async def data_state(url: str) -> dict[str, int]:
    """How far the data has moved from its seed: the mixed traffic adds twice as often as it
    removes, so every run leaves more favorites, and more users holding more than a page (whose
    hearts the cached first page can no longer answer). Recorded at the start of a run so that
    runs on differently grown data are not compared as equals."""
    from favorites.service_layer.favorites import MAX_PAGE

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS users, coalesce(sum(n), 0) AS favorites, "
            "count(*) FILTER (WHERE n > $1) AS users_over_a_page "
            "FROM (SELECT count(*) AS n FROM favorites GROUP BY user_id) AS per_user", MAX_PAGE)
        assert row is not None, "an aggregate returns one row"
        return {"favorites": int(row["favorites"]), "users_with_favorites": int(row["users"]),
                "users_over_a_page": int(row["users_over_a_page"])}
    finally:
        await conn.close()


def _timestamps(now: datetime) -> list[datetime]:
    step = timedelta(days=365) / _TIMESTAMPS
    return [now - step * i for i in range(1, _TIMESTAMPS + 1)]


async def _favorite_rows(shape: SeedShape, now: datetime,
                         progress: Callable[[int], None]) -> AsyncIterator[tuple[Any, ...]]:
    """Rows in batches; each batch yields control so the COPY stream keeps flowing."""
    products = [product_id(j) for j in range(shape.products)]
    stamps = _timestamps(now)
    mask = _TIMESTAMPS - 1
    done = 0
    for first in range(0, shape.users, _CHUNK_USERS):
        batch: list[tuple[Any, ...]] = []
        for u in range(first, min(first + _CHUNK_USERS, shape.users)):
            uid = user_id(u)
            offset = (u * 40_503) & mask
            batch.extend(
                (uid, products[p], stamps[(offset + k * 37) & mask])
                for k, p in enumerate(user_product_indices(u, shape.per_user, shape.products))
            )
        for row in batch:
            yield row
        done += len(batch)
        progress(done)
        await asyncio.sleep(0)


async def _product_rows(count: int) -> AsyncIterator[tuple[Any, ...]]:
    for j in range(count):
        yield (product_id(j), None)
        if j % 10_000 == 0:
            await asyncio.sleep(0)


async def load(url: str, shape: SeedShape, *, drop_indexes: bool = True,
               echo: Callable[[str], None] = print) -> SeedReport:
    report = SeedReport(database_name(url), shape.users, shape.per_user, shape.products,
                        shape.favorites)
    started = time.perf_counter()
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        report.phases[name] = now - mark
        mark = now

    last_print = [0.0]

    def progress(rows: int) -> None:
        now = time.perf_counter()
        if now - last_print[0] >= 5 or rows == shape.favorites:
            last_print[0] = now
            elapsed = now - started
            echo(f"  favorites: {rows:,}/{shape.favorites:,} rows sent "
                 f"({rows / elapsed:,.0f} rows/s)")

    conn = await asyncpg.connect(url, server_settings={"application_name": "favorites-bench-seed"})
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute("SET synchronous_commit = off")
        async with conn.transaction():
            await conn.execute(MARKER_DDL)
            await conn.execute("DELETE FROM bench_seed")
            await conn.execute("TRUNCATE favorites, products, audit_log")
            partitioned = await conn.fetchval(
                "SELECT relkind = 'p' FROM pg_class WHERE oid = 'favorites'::regclass")
            indexes = [] if partitioned or not drop_indexes else await conn.fetch(_INDEXES_SQL)
            for index in indexes:
                if index["constraint_name"]:
                    await conn.execute(
                        f'ALTER TABLE favorites DROP CONSTRAINT "{index["constraint_name"]}"')
                else:
                    await conn.execute(f'DROP INDEX "{index["name"]}"')
            phase("truncate_and_drop_indexes")

            await conn.copy_records_to_table(
                "products", records=_product_rows(shape.products),
                columns=["product_id", "deleted_at"])
            phase("copy_products")
            now = datetime.now(UTC).replace(microsecond=0)
            await conn.copy_records_to_table(
                "favorites", records=_favorite_rows(shape, now, progress),
                columns=["user_id", "product_id", "created_at"])
            phase("copy_favorites")

            for index in indexes:
                if index["constraint_name"]:
                    await conn.execute(f'ALTER TABLE favorites ADD CONSTRAINT '
                                       f'"{index["constraint_name"]}" {index["constraintdef"]}')
                else:
                    await conn.execute(index["indexdef"])
                echo(f"  rebuilt {index['name']}")
            phase("rebuild_indexes")
            report.seconds_total = time.perf_counter() - started
            await conn.execute(
                "INSERT INTO bench_seed (users, per_user, products, layout, seeded_at, seconds) "
                "VALUES ($1, $2, $3, $4, now(), $5)",
                shape.users, shape.per_user, shape.products, LAYOUT_VERSION,
                report.seconds_total)
        phase("commit")
        await conn.execute("VACUUM (ANALYZE) products")
        await conn.execute("VACUUM (ANALYZE) favorites")
        phase("vacuum_analyze")
    finally:
        await conn.close()
    report.seconds_total = time.perf_counter() - started
    return report


def migrate(url: str) -> None:
    """``favorites migrate`` in-process (Alembic runs its own event loop, so call it outside one)."""
    from favorites.adapters.db import migrate as alembic_migrate

    alembic_migrate.upgrade(url)


def seed(url: str, shape: SeedShape, *, drop_indexes: bool = True,
         echo: Callable[[str], None] = print) -> SeedReport:
    """Create the database if needed, migrate it and load ``shape``; prints progress and rows/s."""
    check_bench_database(url)
    if asyncio.run(ensure_database(url)):
        echo(f"created database {database_name(url)}")
    t = time.perf_counter()
    migrate(url)
    migrate_seconds = time.perf_counter() - t
    echo(f"seeding {shape.users:,} users x {shape.per_user} favorites = {shape.favorites:,} rows "
         f"over {shape.products:,} products into {database_name(url)}")
    report = asyncio.run(load(url, shape, drop_indexes=drop_indexes, echo=echo))
    report.phases = {"migrate": migrate_seconds, **report.phases}
    echo(f"seeded {shape.favorites:,} favorites in {report.seconds_total:.1f} s "
         f"({report.rows_per_second:,.0f} rows/s; migrate {migrate_seconds:.1f} s extra)")
    echo("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items()))
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=20_000, help="number of users (default 20000)")
    p.add_argument("--per-user", type=int, default=50, help="favorites per user (default 50)")
    p.add_argument("--products", type=int, default=100_000,
                   help="product pool registered in products (default 100000)")
    p.add_argument("--database-url",
                   default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
                   help=f"bench database (default {DEFAULT_DATABASE_URL}; name must contain 'bench')")
    p.add_argument("--keep-indexes", action="store_true",
                   help="COPY into the indexed table instead of dropping and rebuilding indexes")
    p.add_argument("--if-needed", action="store_true",
                   help="do nothing when the database already holds a seed of this shape")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    shape = SeedShape(args.users, args.per_user, args.products)
    if shape.users < 1 or shape.per_user < 1 or shape.per_user > shape.products:
        print("bench.seed: need users >= 1 and 1 <= per-user <= products", file=sys.stderr)
        return 2
    check_bench_database(args.database_url)
    if args.if_needed:
        asyncio.run(ensure_database(args.database_url))
        migrate(args.database_url)
        if asyncio.run(current_shape(args.database_url)) == shape:
            print(f"{database_name(args.database_url)} already holds {shape}; nothing to do")
            return 0
    seed(args.database_url, shape, drop_indexes=not args.keep_indexes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
