"""``favorites partition``: turn ``favorites`` into a table hash-partitioned by ``user_id``.

One transaction, so it either happens completely or not at all:

1. lock ``favorites`` in SHARE mode (reads go on, writes wait; ``lock_timeout`` bounds the wait
   for the lock itself so a long-running transaction makes the command fail instead of queueing
   every request behind it),
2. create ``favorites_partitioned (...) PARTITION BY HASH (user_id)`` with N partitions
   ``favorites_p000`` ... and copy every row with one ``INSERT ... SELECT``,
3. drop the old table (or, with ``keep_old``, rename it and its indexes to ``*_unpartitioned``),
4. rename the new table to ``favorites`` and create the primary key and indexes on the parent
   with the names the migrations use (``pk_favorites``, ``ix_favorites_product_id``,
   ``ix_favorites_user_created``); PostgreSQL creates one per partition,
5. copy the old table's owner and grants; after the commit, ``VACUUM (ANALYZE)`` the new table.

``user_id`` is in the primary key, the only unique index, as hash partitioning (and Citus, whose
distribution column it is) requires. The Alembic revision does not change: a downgrade drops the
partitioned table like the plain one, an upgrade recreates it unpartitioned (run this again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from favorites.adapters.db.engine import async_url, is_sqlite

#: How long to wait for the table lock before giving up (a long transaction holds it).
LOCK_TIMEOUT_SECONDS = 10.0
MIN_PARTITIONS = 2
MAX_PARTITIONS = 1024
_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
                         "TRIGGER"})


class PartitionError(Exception):
    """The conversion was refused or failed; nothing was changed."""


@dataclass(frozen=True, slots=True)
class PartitionResult:
    partitions: int
    rows: int
    seconds: float
    already_partitioned: bool = False


def partition_name(index: int, partitions: int) -> str:
    return f"favorites_p{index:0{max(3, len(str(partitions - 1)))}d}"


async def partition_favorites(
    url: str, partitions: int, *, keep_old: bool = False
) -> PartitionResult:
    """Convert ``favorites``; idempotent when it is already split into ``partitions``.

    Raises PartitionError on SQLite, a bad count, a missing table or a different existing
    partitioning.
    """
    if is_sqlite(url):
        raise PartitionError("hash partitioning needs PostgreSQL; the database is SQLite")
    if not MIN_PARTITIONS <= partitions <= MAX_PARTITIONS:
        raise PartitionError(f"--partitions must be between {MIN_PARTITIONS} and {MAX_PARTITIONS}")
    started = time.monotonic()
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        rows = await _swap(engine, partitions, keep_old)
        if rows is None:
            return PartitionResult(partitions, 0, time.monotonic() - started, True)
        await _vacuum(engine)
    finally:
        await engine.dispose()
    return PartitionResult(partitions, rows, time.monotonic() - started)


async def _swap(engine: AsyncEngine, partitions: int, keep_old: bool) -> int | None:
    """The conversion in one transaction; rows copied, or None when already done."""
    try:
        async with engine.begin() as conn:
            # The copy may take long; the lock wait must not.
            await conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
            await conn.execute(sa.text(
                f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_SECONDS * 1000)}ms'"))
            await current_partitions(conn)  # a clear error when the table is missing
            # Writes wait from here; a second run started meanwhile sees the finished result.
            await conn.execute(sa.text("LOCK TABLE favorites IN SHARE MODE"))
            current = await current_partitions(conn)
            if current is not None:
                if current == partitions:
                    return None
                raise PartitionError(
                    f"favorites is already partitioned ({current} partitions); refusing to "
                    f"repartition into {partitions}"
                )
            return await _convert(conn, partitions, keep_old)
    except sa.exc.DBAPIError as exc:
        raise PartitionError(f"partitioning failed, nothing changed: {exc.orig}") from exc


async def _vacuum(engine: AsyncEngine) -> None:
    """Outside the transaction (VACUUM cannot run in one): sets the visibility map of the fresh
    copy, so keyset pages are index-only scans from the start rather than after autovacuum."""
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("SET statement_timeout = 0"))
            await conn.execute(sa.text("VACUUM (ANALYZE) favorites"))
    except sa.exc.DBAPIError as exc:
        raise PartitionError(f"favorites is partitioned, but VACUUM (ANALYZE) favorites failed "
                             f"({exc.orig}); run it by hand") from exc


async def current_partitions(conn: AsyncConnection) -> int | None:
    """None for a plain table; the number of partitions when already hash-partitioned."""
    row = (await conn.execute(sa.text(
        "SELECT c.relkind::text, pt.partstrat::text,"
        " (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)"
        " FROM pg_class c LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid"
        " WHERE c.oid = to_regclass('favorites')"
    ))).first()
    if row is None:
        raise PartitionError("table favorites does not exist; run `favorites migrate` first")
    relkind, strategy, children = row
    if relkind != "p":
        return None
    if strategy != "h":
        raise PartitionError("favorites is partitioned, but not by hash; refusing to touch it")
    return int(children)


async def _convert(conn: AsyncConnection, partitions: int, keep_old: bool) -> int:
    async def run(sql: str) -> None:
        await conn.execute(sa.text(sql))

    owner, grants = await _owner_and_grants(conn)
    # Only fixed identifiers and validated integers are interpolated below.
    await run(
        "CREATE TABLE favorites_partitioned (user_id uuid NOT NULL, product_id uuid NOT NULL,"
        " created_at timestamptz NOT NULL) PARTITION BY HASH (user_id)"
    )
    names = [partition_name(i, partitions) for i in range(partitions)]
    for remainder, name in enumerate(names):
        await run(f"CREATE TABLE {name} PARTITION OF favorites_partitioned"
                  f" FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})")
    copied = await conn.execute(sa.text(
        "INSERT INTO favorites_partitioned (user_id, product_id, created_at)"
        " SELECT user_id, product_id, created_at FROM favorites"
    ))
    if keep_old:
        await _rename_old(conn)
    else:
        await run("DROP TABLE favorites")
    await run("ALTER TABLE favorites_partitioned RENAME TO favorites")
    await run("ALTER TABLE favorites ADD CONSTRAINT pk_favorites PRIMARY KEY (user_id, product_id)")
    await run("CREATE INDEX ix_favorites_product_id ON favorites (product_id)")
    await run("CREATE INDEX ix_favorites_user_created ON favorites"
              " (user_id, created_at DESC, product_id)")
    current_user = (await conn.execute(sa.text("SELECT current_user"))).scalar_one()
    for table in ("favorites", *names):
        if owner != current_user:
            await run(f"ALTER TABLE {table} OWNER TO {owner}")
    for privilege, grantee in grants:
        await run(f"GRANT {privilege} ON favorites TO {grantee}")
    return int(copied.rowcount)


async def _owner_and_grants(conn: AsyncConnection) -> tuple[str, list[tuple[str, str]]]:
    """The old table's owner and explicit grants (quoted), to carry over to the new one."""
    owner = (await conn.execute(sa.text(
        "SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class"
        " WHERE oid = 'favorites'::regclass"
    ))).scalar_one()
    rows = (await conn.execute(sa.text(
        "SELECT a.privilege_type,"
        " CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END"
        " FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.oid = 'favorites'::regclass AND a.grantee <> c.relowner"
    ))).all()
    return str(owner), [(str(p), str(g)) for p, g in rows if p in _PRIVILEGES]


async def _rename_old(conn: AsyncConnection) -> None:
    if (await conn.execute(sa.text("SELECT to_regclass('favorites_unpartitioned')"))).scalar():
        raise PartitionError("favorites_unpartitioned already exists; drop it or omit --keep-old")
    renames = (await conn.execute(sa.text(
        "SELECT quote_ident(i.relname), quote_ident(left(i.relname || '_unpartitioned', 63))"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = 'favorites'::regclass"
    ))).all()
    for index, new in renames:
        # Renaming a constraint's index renames the constraint (pk_favorites) too.
        await conn.execute(sa.text(f"ALTER INDEX {index} RENAME TO {new}"))
    await conn.execute(sa.text("ALTER TABLE favorites RENAME TO favorites_unpartitioned"))
