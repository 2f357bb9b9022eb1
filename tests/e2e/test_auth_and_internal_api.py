"""Token endpoints, service-client authentication and the internal endpoints over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from favorites.adapters.db.repository import advisory_key
from favorites.entrypoints.http.app import create_app
from tests.conftest import NARROW_KEY, make_settings, started
from tests.helpers import SERVICE, assert_problem, bearer, new_product


async def _issue(client: httpx.AsyncClient, user: uuid.UUID, role: str = "user") -> dict[str, str]:
    response = await client.post("/v1/auth/tokens", headers=SERVICE,
                                 json={"user_id": str(user), "roles": [role]})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def test_issue_returns_the_documented_pair(client: httpx.AsyncClient) -> None:
    body = await _issue(client, uuid.uuid4())
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in",
                         "refresh_expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["refresh_expires_in"] == 2592000
    usable = await client.get("/v1/users/me/favorites",
                              headers={"Authorization": f"Bearer {body['access_token']}"})
    assert usable.status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    first = await _issue(client, uuid.uuid4())
    second = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    replay = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(replay, 401, "invalid-token")
    family_gone = await client.post("/v1/auth/refresh",
                                    json={"refresh_token": rotated["refresh_token"]})
    assert_problem(family_gone, 401, "invalid-token")
    unknown = await client.post("/v1/auth/refresh", json={"refresh_token": "x" * 43})
    assert_problem(unknown, 401, "invalid-token")


async def test_a_revoked_family_takes_its_access_tokens_along(client: httpx.AsyncClient) -> None:
    """Whoever refreshed with a stolen refresh token holds a working access token; once the
    spent token is presented again, that access token is refused too, as is every other the
    family issued. After a logout, an older access token of the family is refused as well.
    Another family of the same user keeps working."""
    owner = uuid.uuid4()
    victim = await _issue(client, owner)
    other = await _issue(client, owner)
    thief = (await client.post("/v1/auth/refresh",
                               json={"refresh_token": victim["refresh_token"]})).json()
    for pair in (victim, thief):
        assert (await client.get("/v1/users/me/favorites/count",
                                 headers=_bearer(pair))).status_code == 200
    replay = await client.post("/v1/auth/refresh", json={"refresh_token": victim["refresh_token"]})
    assert_problem(replay, 401, "invalid-token")
    for pair in (victim, thief):
        refused = await client.get("/v1/users/me/favorites/count", headers=_bearer(pair))
        assert "revoked" in assert_problem(refused, 401, "invalid-token")["detail"]
    assert (await client.get("/v1/users/me/favorites/count",
                             headers=_bearer(other))).status_code == 200
    newer = (await client.post("/v1/auth/refresh",
                               json={"refresh_token": other["refresh_token"]})).json()
    out = await client.post("/v1/auth/logout", headers=_bearer(newer),
                            json={"refresh_token": newer["refresh_token"]})
    assert out.status_code == 204
    for pair in (other, newer):
        refused = await client.get("/v1/users/me/favorites/count", headers=_bearer(pair))
        assert_problem(refused, 401, "invalid-token")


def _bearer(pair: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def test_a_logout_racing_a_refresh_leaves_no_token_of_the_family(
        client: httpx.AsyncClient) -> None:
    """A refresh and a logout of one family at the same moment: whichever runs first, once both
    have answered no refresh token of the family works. On PostgreSQL the logout's revocation
    used to miss the token the refresh was inserting, so it outlived the logout."""
    survived = 0
    for _ in range(20):
        pair = await _issue(client, uuid.uuid4())
        refreshed, out = await asyncio.gather(
            client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
            client.post("/v1/auth/logout", json={"refresh_token": pair["refresh_token"]},
                        headers={"Authorization": f"Bearer {pair['access_token']}"}))
        assert out.status_code == 204
        assert refreshed.status_code in (200, 401)
        if refreshed.status_code == 200:
            again = await client.post("/v1/auth/refresh",
                                      json={"refresh_token": refreshed.json()["refresh_token"]})
            survived += again.status_code == 200
    assert survived == 0


async def test_logout_revokes_refresh_family_and_access_token(client: httpx.AsyncClient) -> None:
    pair = await _issue(client, uuid.uuid4())
    auth = {"Authorization": f"Bearer {pair['access_token']}"}
    out = await client.post("/v1/auth/logout", headers=auth,
                            json={"refresh_token": pair["refresh_token"]})
    assert out.status_code == 204
    after = await client.get("/v1/users/me/favorites", headers=auth)
    assert_problem(after, 401, "invalid-token")
    refresh = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_problem(refresh, 401, "invalid-token")


async def test_jwks_is_public_and_empty_for_hs256(client: httpx.AsyncClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json() == {"keys": []}
    # Keys may be cached (every other response is no-store), and only its own policy is sent.
    assert response.headers.get_list("cache-control") == ["public, max-age=300"]


async def test_service_key_failures(client: httpx.AsyncClient) -> None:
    body = {"user_id": str(uuid.uuid4()), "roles": ["user"]}
    assert_problem(await client.post("/v1/auth/tokens", json=body), 401, "invalid-api-key")
    assert_problem(await client.post("/v1/auth/tokens", json=body,
                                     headers={"X-API-Key": "wrong"}), 401, "invalid-api-key")
    narrow = await client.post("/v1/auth/tokens", json=body, headers={"X-API-Key": NARROW_KEY})
    assert_problem(narrow, 403, "scope-missing")
    in_query = await client.post(f"/v1/auth/tokens?api_key={NARROW_KEY}", json=body,
                                 headers=SERVICE)
    assert_problem(in_query, 400, "malformed-request")
    user_token = await client.post("/v1/auth/tokens", json=body, headers=bearer(uuid.uuid4()))
    assert_problem(user_token, 401, "invalid-api-key")


async def test_service_clients_are_bound_to_their_cidrs(client: httpx.AsyncClient) -> None:
    app = client.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://favorites.test") as far:
        response = await far.put(f"/internal/v1/products/{uuid.uuid4()}", headers=SERVICE)
        assert_problem(response, 403, "ip-not-allowed")
        # X-Forwarded-For from an untrusted peer is not believed.
        spoofed = await far.put(f"/internal/v1/products/{uuid.uuid4()}",
                                headers={**SERVICE, "X-Forwarded-For": "127.0.0.1"})
        assert_problem(spoofed, 403, "ip-not-allowed")


async def test_user_tokens_cannot_call_internal_routes(client: httpx.AsyncClient) -> None:
    admin = bearer(uuid.uuid4(), ("admin",))
    for method, path in (("DELETE", f"/internal/v1/users/{uuid.uuid4()}"),
                         ("PUT", f"/internal/v1/products/{uuid.uuid4()}"),
                         ("DELETE", f"/internal/v1/products/{uuid.uuid4()}")):
        assert_problem(await client.request(method, path, headers=admin), 401, "invalid-api-key")
    narrow = await client.delete(f"/internal/v1/users/{uuid.uuid4()}",
                                 headers={"X-API-Key": NARROW_KEY})
    assert_problem(narrow, 403, "scope-missing")


async def test_products_register_and_delete(client: httpx.AsyncClient) -> None:
    product = uuid.uuid4()
    created = await client.put(f"/internal/v1/products/{product}", headers=SERVICE)
    assert created.status_code == 201
    assert created.json() == {"product_id": str(product), "status": "active"}
    again = await client.put(f"/internal/v1/products/{product}", headers=SERVICE)
    assert again.status_code == 200
    fans = [uuid.uuid4() for _ in range(3)]
    for fan in fans:
        await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(fan))
    deleted = await client.delete(f"/internal/v1/products/{product}", headers=SERVICE)
    assert deleted.status_code == 202
    assert deleted.json() == {"product_id": str(product), "status": "deleting"}
    count: dict[str, int] = {}
    for _ in range(50):  # the purge runs in the background
        count = (await client.get(f"/v1/products/{product}/favorites/count",
                                  headers=bearer(fans[0]))).json()
        if count["count"] == 0:
            break
        await asyncio.sleep(0.05)
    assert count == {"count": 0}
    readd = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(fans[0]))
    assert_problem(readd, 404, "product-not-found")


async def test_erasure_deletes_favorites_and_tokens(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    products = [await new_product(client) for _ in range(3)]
    for product in products:
        await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    pair = await _issue(client, owner)
    erased = await client.delete(f"/internal/v1/users/{owner}", headers=SERVICE)
    assert erased.status_code == 200
    assert erased.json() == {"deleted_favorites": 3}
    again = await client.delete(f"/internal/v1/users/{owner}", headers=SERVICE)
    assert again.json() == {"deleted_favorites": 0}
    count = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 0}
    refresh = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_problem(refresh, 401, "invalid-token")
    # The access token issued before the erasure can no longer write favorites back.
    readd = await client.put(f"/v1/users/me/favorites/{products[0]}", headers=_bearer(pair))
    assert "revoked" in assert_problem(readd, 401, "invalid-token")["detail"]


async def test_an_erased_users_token_adds_nothing_on_an_instance_that_has_not_heard(
    client: httpx.AsyncClient, database_url: str, session_tmp: Path,
) -> None:
    """Instance B keeps its in-memory revocation list as it was (its pull is stopped, as if the
    next one were a second away) while A erases the user. B's add with the user's token is
    still refused: the add asks the database, under the user's lock. Without that, the erased
    user's favorites came back on B, with an audit row naming the user."""
    other = create_app(make_settings(database_url, session_tmp))
    async for b in started(other):
        await other.state.container.revocations.stop()  # B hears of nothing from now on
        owner = uuid.uuid4()
        products = [await new_product(client) for _ in range(3)]
        pair = await _issue(client, owner)
        before = await b.put(f"/v1/users/me/favorites/{products[0]}", headers=_bearer(pair))
        assert before.status_code == 201
        erased = await client.delete(f"/internal/v1/users/{owner}", headers=SERVICE)
        assert erased.json() == {"deleted_favorites": 1}
        single = await b.put(f"/v1/users/me/favorites/{products[1]}", headers=_bearer(pair))
        assert "revoked" in assert_problem(single, 401, "invalid-token")["detail"]
        count = await b.get("/v1/users/me/favorites/count", headers=bearer(owner))
        assert count.json() == {"count": 0}
        # A removal needs no such check: there is nothing left to remove.
        removed = await b.delete(f"/v1/users/me/favorites/{products[0]}", headers=_bearer(pair))
        assert removed.status_code == 204


class _UserLock:
    """The user's advisory lock held on a connection of its own, as an add, an erasure or a
    refresh holds it until it commits; ``waiter`` tells when the app is queued behind it (read
    from ``pg_locks``, not guessed from a sleep)."""

    def __init__(self, conn: asyncpg.Connection, user: uuid.UUID):
        self.conn, self.key = conn, advisory_key(user)

    async def take(self) -> None:
        self.transaction = self.conn.transaction()
        await self.transaction.start()
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", self.key)

    async def waiter(self) -> None:
        key = self.key & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the key's two unsigned halves
        for _ in range(500):  # 10 s
            if await self.conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND classid::bigint = $1 AND objid::bigint = $2",
                    key >> 32, key & 0xFFFF_FFFF):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("nothing waits for the user's lock: the app never took it")


async def _with_user_lock(postgres_url: str, session_tmp: Path
                          ) -> AsyncIterator[tuple[httpx.AsyncClient, asyncpg.Connection]]:
    holder = await asyncpg.connect(postgres_url.replace("postgresql://", "postgres://", 1))
    try:
        async for client in started(create_app(make_settings(postgres_url, session_tmp))):
            yield client, holder
    finally:
        await holder.close()


async def test_an_erasure_waits_for_an_add_holding_the_users_lock(postgres_url: str,
                                                                  session_tmp: Path) -> None:
    """The erasure takes the user's advisory lock (which every add holds until it commits)
    before it deletes: an add in flight is either deleted by it or sees its revocations.
    PostgreSQL's advisory lock; on SQLite every writer holds the database's write lock."""
    owner = uuid.uuid4()
    async for client, holder in _with_user_lock(postgres_url, session_tmp):
        lock = _UserLock(holder, owner)
        await lock.take()
        erasure = asyncio.ensure_future(client.delete(f"/internal/v1/users/{owner}",
                                                      headers=SERVICE))
        await lock.waiter()
        await lock.transaction.rollback()
        assert (await asyncio.wait_for(erasure, 5)).status_code == 200


async def test_an_add_queued_behind_an_erasure_sees_its_revocation(postgres_url: str,
                                                                    session_tmp: Path) -> None:
    """The other order: the add waits for the user's lock while the erasure (here, its
    revocation of the token) commits; the add then finds the token revoked, though this
    instance's in-memory list has not heard of it."""
    owner = uuid.uuid4()
    async for client, holder in _with_user_lock(postgres_url, session_tmp):
        product = await new_product(client)
        pair = await _issue(client, owner)
        jti = json.loads(base64.urlsafe_b64decode(
            pair["access_token"].split(".")[1] + "=="))["jti"]
        lock = _UserLock(holder, owner)
        await lock.take()
        add = asyncio.ensure_future(client.put(f"/v1/users/me/favorites/{product}",
                                               headers=_bearer(pair)))
        await lock.waiter()
        await holder.execute("INSERT INTO revoked_tokens (jti, revoked_at, expires_at)"
                             " VALUES ($1, now(), now() + interval '1 hour')", jti)
        await lock.transaction.commit()
        refused = await asyncio.wait_for(add, 5)
        assert "revoked" in assert_problem(refused, 401, "invalid-token")["detail"]
        assert await holder.fetchval("SELECT count(*) FROM favorites WHERE user_id = $1",
                                     owner) == 0


async def test_a_refresh_queued_behind_an_erasure_finds_its_token_gone(
        postgres_url: str, session_tmp: Path) -> None:
    """A refresh takes the user's lock too (after its family's): one that arrives while an
    erasure holds it finds the refresh token deleted, instead of inserting a pair that the
    erasure's delete, begun earlier, does not see and that outlives it."""
    owner = uuid.uuid4()
    async for client, holder in _with_user_lock(postgres_url, session_tmp):
        pair = await _issue(client, owner)
        lock = _UserLock(holder, owner)
        await lock.take()
        refresh = asyncio.ensure_future(client.post(
            "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}))
        await lock.waiter()
        await holder.execute("DELETE FROM refresh_tokens WHERE user_id = $1", owner)
        await lock.transaction.commit()
        assert_problem(await asyncio.wait_for(refresh, 5), 401, "invalid-token")
        assert await holder.fetchval("SELECT count(*) FROM refresh_tokens WHERE user_id = $1",
                                     owner) == 0
        # Issuing waits for the user's lock as well: it is ordered before or after an erasure.
        await lock.take()
        issue = asyncio.ensure_future(client.post(
            "/v1/auth/tokens", headers=SERVICE, json={"user_id": str(owner), "roles": ["user"]}))
        await lock.waiter()
        await lock.transaction.rollback()
        assert (await asyncio.wait_for(issue, 5)).status_code == 201


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.json() == {"status": "live"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_openapi_is_generated_from_the_code(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/v1/users/{user_id}/favorites/{product_id}"]) == {"put", "delete", "get"}
    assert "/internal/v1/users/{user_id}" in paths
    assert "/v1/auth/tokens" in paths
    # The hot endpoints read their parameters from the request; the schema still lists each one
    # of every templated path, once.
    for path, operations in paths.items():
        templated = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert sorted(names) == sorted(templated), (method, path)
    listing = paths["/v1/users/{user_id}/favorites"]["get"]["parameters"]
    assert {(p["name"], p["in"], p["required"]) for p in listing} == {
        ("user_id", "path", True), ("limit", "query", False), ("cursor", "query", False)}
    contains = paths["/v1/users/{user_id}/favorites/contains"]["get"]["parameters"]
    assert ("product_ids", "query", True) in {(p["name"], p["in"], p["required"]) for p in contains}
