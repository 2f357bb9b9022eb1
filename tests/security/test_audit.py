"""The audit log: one row per change, written in the same transaction as the change.

Anchors: ASVS 7.1.3 / 7.2.1 (security-relevant events logged), OWASP API10-adjacent
accountability; GDPR Art. 17 for the erasure rows.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import sqlalchemy as sa

from favorites.adapters.db.tables import audit_log
from tests.helpers import SERVICE, assert_problem, bearer, new_product


async def _rows(client: httpx.AsyncClient, **where: Any) -> list[dict[str, Any]]:
    engine = client.app.state.container.engine  # type: ignore[attr-defined]
    stmt = sa.select(audit_log).order_by(audit_log.c.id)
    for column, value in where.items():
        stmt = stmt.where(audit_log.c[column] == value)
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in (await conn.execute(stmt)).all()]


async def test_add_and_remove_write_one_row_each_with_the_request_id(
    client: httpx.AsyncClient,
) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    added = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))  # no-op
    removed = await client.delete(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    await client.delete(f"/v1/users/me/favorites/{product}", headers=bearer(owner))  # no-op
    rows = await _rows(client, subject_user_id=str(owner))
    assert [(r["action"], r["request_id"]) for r in rows] == [
        ("favorite.added", added.headers["x-request-id"]),
        ("favorite.removed", removed.headers["x-request-id"]),
    ]
    assert {r["actor_type"] for r in rows} == {"user"}
    assert {r["outcome"] for r in rows} == {"success"}


@contextlib.asynccontextmanager
async def _audit_fails_for(client: httpx.AsyncClient, subject: str) -> AsyncIterator[None]:
    """A trigger that refuses the audit rows of ``subject``: the failure comes after the change
    itself was written, inside the same transaction or statement, on either backend."""
    engine = client.app.state.container.engine  # type: ignore[attr-defined]
    sqlite = engine.dialect.name == "sqlite"
    create = [
        f"CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log WHEN NEW.subject_user_id = "
        f"'{subject}' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
    ] if sqlite else [
        "CREATE FUNCTION audit_fails() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$",
        f"CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log FOR EACH ROW WHEN "
        f"(NEW.subject_user_id = '{subject}') EXECUTE FUNCTION audit_fails()",
    ]
    drop = ["DROP TRIGGER audit_fails"] if sqlite else [
        "DROP TRIGGER audit_fails ON audit_log", "DROP FUNCTION audit_fails()"]
    async with engine.begin() as conn:
        for statement in create:
            await conn.execute(sa.text(statement))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in drop:
                await conn.execute(sa.text(statement))


async def test_a_change_whose_audit_row_fails_is_not_made(client: httpx.AsyncClient) -> None:
    """The audit row is written with the change, all or nothing: an add or a remove whose audit
    row is refused answers 500 and leaves the favorites as they were."""
    owner, product, kept = uuid.uuid4(), await new_product(client), await new_product(client)
    url = f"/v1/users/me/favorites/{kept}"
    assert (await client.put(url, headers=bearer(owner))).status_code == 201
    async with _audit_fails_for(client, str(owner)):
        added = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
        removed = await client.delete(url, headers=bearer(owner))
    assert (added.status_code, removed.status_code) == (500, 500)
    rows = await _rows(client, subject_user_id=str(owner))
    assert [(r["action"], r["product_id"]) for r in rows] == [("favorite.added", kept)]
    listed = await client.get("/v1/users/me/favorites", headers=bearer(owner))
    assert [item["product_id"] for item in listed.json()["items"]] == [str(kept)]


async def test_admin_reads_are_audited(client: httpx.AsyncClient) -> None:
    owner, admin = uuid.uuid4(), uuid.uuid4()
    response = await client.get(f"/v1/users/{owner}/favorites", headers=bearer(admin, ("admin",)))
    rows = await _rows(client, subject_user_id=str(owner))
    assert [(r["action"], r["actor_id"], r["actor_type"], r["request_id"]) for r in rows] == [
        ("favorites.viewed_by_admin", str(admin), "admin", response.headers["x-request-id"]),
    ]


async def test_erasure_pseudonymises_and_records_itself(client: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    erased = await client.delete(f"/internal/v1/users/{owner}", headers=SERVICE)
    assert erased.status_code == 200
    assert await _rows(client, subject_user_id=str(owner)) == []
    assert await _rows(client, actor_id=str(owner)) == []
    pseudonym = client.app.state.container.users.pseudonym(owner)  # type: ignore[attr-defined]
    actions = [r["action"] for r in await _rows(client, subject_user_id=pseudonym)]
    assert actions == ["favorite.added", "user.erased"]


async def test_refresh_reuse_is_audited_as_a_revoked_family(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    issued = (await client.post("/v1/auth/tokens", headers=SERVICE,
                                json={"user_id": str(owner), "roles": ["user"]})).json()
    await client.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    assert_problem(reuse, 401, "invalid-token")
    rows = await _rows(client, subject_user_id=str(owner), action="token.family_revoked")
    assert len(rows) == 1
    assert rows[0]["outcome"] == "reuse_detected"
