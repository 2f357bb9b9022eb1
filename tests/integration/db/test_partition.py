"""``favorites partition``: favorites becomes hash-partitioned by user_id, and everything still works."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from favorites.adapters.db import driver, migrate
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.partition import PartitionError, partition_favorites
from favorites.adapters.db.repository import SqlFavoritesRepository, advisory_key
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.models import Favorite
from favorites.entrypoints.cli import main, parser
from tests.conftest import drop_postgres, fresh_postgres_url
from tests.integration import test_repository_contract as contract
from tests.integration.db.explain import PER_USER, USERS, describe, explain, nodes, populate

pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent
PARTITIONS = 8
CONTRACT = sorted(name for name in dir(contract) if name.startswith("test_"))


def cli(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAVORITES_")}
    env.update(FAVORITES_DATABASE_URL=url, FAVORITES_DATA_DIR=str(cwd),
               FAVORITES_JWT_SECRET="partition-test-" + "x" * 32)
    return subprocess.run([str(BIN / "favorites"), *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def fingerprint(url: str) -> tuple[int, str]:
    return query(url, "SELECT count(*), md5(string_agg(user_id::text || product_id::text"
                      " || created_at::text, ',' ORDER BY user_id, product_id)) FROM favorites")[0]


@pytest.fixture(scope="module")
def role() -> str:
    """A role to grant to, to see grants carried over. A predefined one, because grants to it
    live in the database's catalog and vanish with it (a created role would outlive a killed run)."""
    return "pg_monitor"


@pytest.fixture(scope="module")
def partitioned(
    tmp_path_factory: pytest.TempPathFactory, role: str
) -> Iterator[tuple[str, list[uuid.UUID], tuple[int, str], subprocess.CompletedProcess[str]]]:
    """20,000 favorites, then `favorites partition --partitions 8` run as an operator would."""
    name, url = fresh_postgres_url("favorites_partition")
    try:
        migrate.upgrade(url)
        users = populate(url)
        query(url, f"GRANT SELECT, INSERT, DELETE ON favorites TO {role}")
        before = fingerprint(url)
        done = cli("partition", "--partitions", str(PARTITIONS), url=url,
                   cwd=tmp_path_factory.mktemp("cli"))
        yield url, users, before, done
    finally:
        drop_postgres(name)


@pytest.fixture(scope="module")
async def factory(partitioned: tuple[str, Any, Any, Any]) -> AsyncIterator[SqlUnitOfWorkFactory]:
    factory = SqlUnitOfWorkFactory(create_engine(partitioned[0], PoolSettings(1, 4, 5000)))
    yield factory
    await factory.dispose()


def run_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, *args: str) -> int:
    """The CLI in process (quicker than a subprocess), configured like the one above."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("FAVORITES_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FAVORITES_DATABASE_URL", url)
    monkeypatch.setenv("FAVORITES_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FAVORITES_JWT_SECRET", "partition-test-" + "x" * 32)
    return main(list(args))


def test_cli_lists_the_partition_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert "partition" in parser().format_help()
    with pytest.raises(SystemExit) as exit_:
        main(["partition", "--help"])
    assert exit_.value.code == 0
    assert "--partitions N" in capsys.readouterr().out


def test_sqlite_is_refused_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'f.db'}",
                    "partition", "--partitions", "4") == 1
    assert capsys.readouterr().err.strip() == (
        "favorites partition: hash partitioning needs PostgreSQL; the database is SQLite")


def test_the_table_is_hash_partitioned_with_every_row_kept(
    partitioned: tuple[str, list[uuid.UUID], tuple[int, str], Any],
) -> None:
    url, _, before, done = partitioned
    assert done.returncode == 0, done.stderr
    assert f"into {PARTITIONS} partitions ({USERS * PER_USER} rows copied" in done.stdout
    assert fingerprint(url) == before  # same rows, same values
    assert query(url, "SELECT c.relkind, pt.partstrat, pg_get_partkeydef(c.oid) FROM pg_class c"
                      " JOIN pg_partitioned_table pt ON pt.partrelid = c.oid"
                      " WHERE c.oid = 'favorites'::regclass") == [("p", "h", "HASH (user_id)")]
    children = query(url, "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                          " JOIN pg_class c ON c.oid = i.inhrelid"
                          " WHERE i.inhparent = 'favorites'::regclass ORDER BY 1")
    assert [n for n, _ in children] == [f"favorites_p{i:03d}" for i in range(PARTITIONS)]
    assert children[3][1] == f"FOR VALUES WITH (modulus {PARTITIONS}, remainder 3)"
    # rows spread over the partitions, each user in exactly one
    spread = query(url, "SELECT tableoid::regclass::text, count(DISTINCT user_id) FROM favorites"
                        " GROUP BY 1")
    assert len(spread) == PARTITIONS
    assert sum(users for _, users in spread) == USERS
    assert query(url, "SELECT to_regclass('favorites_partitioned'),"
                      " to_regclass('favorites_unpartitioned')") == [(None, None)]


def test_keys_and_indexes_keep_their_names_and_user_id_is_in_every_unique_one(
    partitioned: tuple[str, Any, Any, Any],
) -> None:
    url = partitioned[0]
    parent = dict(query(url, "SELECT indexname, indexdef FROM pg_indexes"
                             " WHERE tablename = 'favorites'"))
    assert set(parent) == {"pk_favorites", "ix_favorites_product_id", "ix_favorites_user_created"}
    assert "(user_id, created_at DESC, product_id)" in parent["ix_favorites_user_created"]
    assert query(url, "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                      " WHERE conname = 'pk_favorites'") == [("PRIMARY KEY (user_id, product_id)",)]
    # Citus-compatible: the distribution column is part of every unique index, partitions included
    unique = query(url, "SELECT x.indexrelid::regclass::text, a.attname = 'user_id' FROM pg_index x"
                        " JOIN pg_class t ON t.oid = x.indrelid"
                        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]"
                        " WHERE x.indisunique AND t.relname LIKE 'favorites%'")
    assert len(unique) == PARTITIONS + 1
    assert all(leads for _, leads in unique)


def test_a_duplicate_is_refused_by_the_primary_key(
    partitioned: tuple[str, list[uuid.UUID], Any, Any],
) -> None:
    url, users = partitioned[0], partitioned[1]
    user_id, product_id = query(url, "SELECT user_id, product_id FROM favorites WHERE user_id = %s"
                                     " LIMIT 1", users[5])[0]
    with pytest.raises(psycopg.errors.UniqueViolation, match="duplicate key value"):
        query(url, "INSERT INTO favorites VALUES (%s, %s, now())", user_id, product_id)


def test_grants_are_carried_over(partitioned: tuple[str, Any, Any, Any], role: str) -> None:
    url = partitioned[0]
    rows = query(url, "SELECT has_table_privilege(%s, 'favorites', 'SELECT'),"
                      " has_table_privilege(%s, 'favorites', 'INSERT'),"
                      " has_table_privilege(%s, 'favorites', 'UPDATE')", role, role, role)
    assert rows == [(True, True, False)]


def test_running_it_again_is_a_no_op_and_another_count_is_refused(
    partitioned: tuple[str, Any, tuple[int, str], Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url, before = partitioned[0], partitioned[2]
    assert run_main(monkeypatch, tmp_path, url, "partition", "--partitions", str(PARTITIONS)) == 0
    assert "already hash-partitioned into 8; nothing to do" in capsys.readouterr().out
    assert run_main(monkeypatch, tmp_path, url, "partition", "--partitions", "4") == 1
    assert "already partitioned (8 partitions); refusing to repartition into 4" in (
        capsys.readouterr().err)
    assert fingerprint(url) == before


@pytest.mark.parametrize("name", CONTRACT)
async def test_the_repository_contract_holds_on_the_partitioned_table(
    factory: SqlUnitOfWorkFactory, name: str
) -> None:
    test: Callable[[SqlUnitOfWorkFactory], Any] = getattr(contract, name)
    await test(factory)


async def test_the_repository_writes_into_the_right_partition(
    factory: SqlUnitOfWorkFactory,
) -> None:
    favorite = Favorite(uuid.uuid4(), uuid.uuid4(), contract.T0)
    async with factory() as work:
        assert await work.favorites.insert(favorite) is True
        assert await work.favorites.insert(favorite) is False  # ON CONFLICT on the parent's PK
        await work.commit()
    async with factory(readonly=True) as work:
        assert await work.favorites.get(favorite.user_id, favorite.product_id) == favorite


async def _child_indexes(factory: SqlUnitOfWorkFactory) -> set[str]:
    async with factory.primary.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'ix_favorites_user_created'::regclass")
        return {row[0] for row in rows}


async def test_keyset_pages_use_one_partitions_index_without_sorting(
    factory: SqlUnitOfWorkFactory, partitioned: tuple[str, list[uuid.UUID], Any, Any],
) -> None:
    owner = partitioned[1][42]
    children = await _child_indexes(factory)
    assert len(children) == PARTITIONS
    async with factory.primary.connect() as conn:
        first = await explain(conn, lambda repo: repo.page(owner, PER_USER + 1, None))
        items = await SqlFavoritesRepository(conn, "postgresql").page(owner, 10, None)
        last = items[-1]
        cursor = await explain(
            conn, lambda repo: repo.page(owner, 21, (last.created_at, last.product_id)))
    for plan in (first, cursor):
        kinds = describe(plan)
        scans = [n for n in nodes(plan) if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        assert len(scans) == 1, kinds  # pruned to the owner's partition
        assert scans[0]["Index Name"] in children, kinds
        assert not any("Sort" in kind or "Append" in kind for kind, _ in kinds), kinds
        print("partitioned plan:", kinds)


def test_alembic_downgrade_and_upgrade_still_work_after_partitioning() -> None:
    name, url = fresh_postgres_url("favorites_partition_migrate")
    try:
        migrate.upgrade(url)
        query(url, "INSERT INTO favorites SELECT gen_random_uuid(), gen_random_uuid(), now()"
                   " FROM generate_series(1, 100)")
        result = asyncio.run(partition_favorites(url, 4))
        assert (result.partitions, result.rows, result.already_partitioned) == (4, 100, False)
        migrate.downgrade(url, "base")  # drops the partitioned table and its partitions
        assert query(url, "SELECT relname FROM pg_class WHERE relname LIKE 'favorites%'") == []
        migrate.upgrade(url)  # a plain table again: the operator re-runs `favorites partition`
        assert query(url, "SELECT relkind FROM pg_class WHERE relname = 'favorites'") == [("r",)]
        assert asyncio.run(partition_favorites(url, 4)).rows == 0
    finally:
        drop_postgres(name)


def test_keep_old_keeps_the_plain_table_under_another_name() -> None:
    name, url = fresh_postgres_url("favorites_partition_keep")
    try:
        migrate.upgrade(url)
        query(url, "INSERT INTO favorites SELECT gen_random_uuid(), gen_random_uuid(), now()"
                   " FROM generate_series(1, 10)")
        asyncio.run(partition_favorites(url, 2, keep_old=True))
        assert query(url, "SELECT count(*) FROM favorites_unpartitioned") == [(10,)]
        assert {r[0] for r in query(url, "SELECT indexname FROM pg_indexes"
                                         " WHERE tablename = 'favorites_unpartitioned'")} == {
            "pk_favorites_unpartitioned", "ix_favorites_product_id_unpartitioned",
            "ix_favorites_user_created_unpartitioned"}
        with pytest.raises(PartitionError, match="refusing to repartition"):
            asyncio.run(partition_favorites(url, 3))
    finally:
        drop_postgres(name)


def test_a_missing_table_and_a_bad_count_are_refused() -> None:
    name, url = fresh_postgres_url("favorites_partition_empty")
    try:
        with pytest.raises(PartitionError, match="run `favorites migrate` first"):
            asyncio.run(partition_favorites(url, 4))
        with pytest.raises(PartitionError, match="between 2 and 1024"):
            asyncio.run(partition_favorites(url, 1))
    finally:
        drop_postgres(name)


async def _add_while_converting(url: str) -> tuple[str, str]:
    """The conversion's lock steps, by hand, with an add arriving between them: SHARE on
    ``favorites`` (writes wait), then the exclusive lock its table swap needs."""
    converter, adder = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        user = uuid.uuid4()
        conversion = converter.transaction()
        await conversion.start()
        await converter.execute("LOCK TABLE favorites IN SHARE MODE")
        add = asyncio.create_task(adder.fetchrow(
            driver.ADD, advisory_key(user), user, uuid.uuid4(), datetime.now(UTC), 10,
            str(user), "user", "favorite.added", str(user), "req", "success", False, None))
        await asyncio.sleep(0.3)  # the add is queued behind the SHARE lock
        try:
            await converter.execute("ALTER TABLE favorites RENAME TO favorites_swapped")
            swapped = "swapped"
        except asyncpg.DeadlockDetectedError:
            swapped = "deadlock"
        await conversion.rollback()
        try:
            added = str((await add)[0])
        except asyncpg.DeadlockDetectedError:
            added = "deadlock"
        return swapped, added
    finally:
        await converter.close()
        await adder.close()


def test_an_add_during_the_conversion_waits_for_it_instead_of_deadlocking() -> None:
    """An add that read ``favorites`` before asking for the write lock held the read lock the
    swap waits for, while waiting for the lock the conversion holds: PostgreSQL aborted one of
    them. Adds take the write lock first (migration 0004), like any insert."""
    name, url = fresh_postgres_url("favorites_partition_lock")
    try:
        migrate.upgrade(url)
        assert asyncio.run(_add_while_converting(url)) == ("swapped", "created")
    finally:
        drop_postgres(name)
