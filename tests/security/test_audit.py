"""The audit log: one row per change, written in the same transaction as the change.

Anchors: ASVS 7.1.3 / 7.2.1 (security-relevant events logged), OWASP API10-adjacent
accountability; GDPR Art. 17 for the erasure rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from favorites.adapters.db.driver import DriverFavoritesRepository
from favorites.adapters.db.repository import SqlFavoritesRepository
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


async def test_a_failed_change_leaves_no_audit_row(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit insert happens before the failure and is rolled back with the change."""
    owner, product = uuid.uuid4(), await new_product(client)

    async def fail(self: SqlFavoritesRepository, user_id: uuid.UUID) -> int:
        raise RuntimeError("disk on fire")

    for repository in (SqlFavoritesRepository, DriverFavoritesRepository):
        monkeypatch.setattr(repository, "count_for_user", fail)
    response = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert response.status_code == 500
    monkeypatch.undo()
    assert await _rows(client, subject_user_id=str(owner)) == []
    count = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 0}


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
