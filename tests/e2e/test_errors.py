"""Every error status of SPEC §3 as problem+json, with the headers the contract names."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from favorites.domain.errors import catalogue
from favorites.entrypoints.http.app import create_app
from favorites.observability import metrics
from tests.conftest import make_settings, started
from tests.helpers import SERVICE, assert_problem, bearer, new_product, token


async def test_missing_and_invalid_tokens_are_401(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer not.a.jwt"}):
        response = await client.get("/v1/users/me/favorites", headers=headers)
        assert_problem(response, 401, "invalid-token")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_a_credential_sent_twice_is_refused(client: httpx.AsyncClient) -> None:
    """Two valid tokens of two users: neither is picked (a proxy may have checked the other)."""
    first, second = uuid.uuid4(), uuid.uuid4()
    twice = [("Authorization", bearer(first)["Authorization"]),
             ("Authorization", bearer(second)["Authorization"])]
    response = await client.get("/v1/users/me/favorites", headers=twice)
    assert "more than one Authorization header" in assert_problem(
        response, 401, "invalid-token")["detail"]
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert (await client.get("/v1/users/me/favorites", headers=twice[:1])).status_code == 200
    body = {"user_id": str(second), "roles": ["user"]}
    keys = [("X-API-Key", SERVICE["X-API-Key"])] * 2
    assert_problem(await client.post("/v1/auth/tokens", json=body, headers=keys),
                   401, "invalid-api-key")
    assert (await client.post("/v1/auth/tokens", json=body, headers=keys[:1])).status_code == 201


async def test_other_users_data_is_403(client: httpx.AsyncClient) -> None:
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    product = await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    for method, path in (("GET", f"/v1/users/{owner}/favorites"),
                         ("GET", f"/v1/users/{owner}/favorites/count"),
                         ("GET", f"/v1/users/{owner}/favorites/{product}"),
                         ("GET", f"/v1/users/{owner}/favorites/contains?product_ids={product}"),
                         ("PUT", f"/v1/users/{owner}/favorites/{product}"),
                         ("DELETE", f"/v1/users/{owner}/favorites/{product}")):
        response = await client.request(method, path, headers=bearer(intruder))
        detail = assert_problem(response, 403, "forbidden")["detail"]
        assert ("change" in detail) == (method != "GET")  # a read is not called a change
    still = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert still.json() == {"count": 1}


async def test_admin_reads_but_never_writes(client: httpx.AsyncClient) -> None:
    owner, admin = uuid.uuid4(), uuid.uuid4()
    product = await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    admin_headers = bearer(admin, ("admin",))
    listed = await client.get(f"/v1/users/{owner}/favorites", headers=admin_headers)
    assert [i["product_id"] for i in listed.json()["items"]] == [str(product)]
    assert (await client.get(f"/v1/users/{owner}/favorites/count",
                             headers=admin_headers)).json() == {"count": 1}
    assert (await client.get(f"/v1/users/{owner}/favorites/{product}",
                             headers=admin_headers)).status_code == 200
    for method in ("PUT", "DELETE"):
        response = await client.request(method, f"/v1/users/{owner}/favorites/{product}",
                                        headers=admin_headers)
        assert_problem(response, 403, "forbidden")
        # Not even its own list: "never write" (SPEC §4) holds for the admin's own id and `me`.
        for target in (admin, "me"):
            own = await client.request(method, f"/v1/users/{target}/favorites/{product}",
                                       headers=admin_headers)
            assert "read-only" in assert_problem(own, 403, "forbidden")["detail"]
    assert (await client.get("/v1/users/me/favorites/count",
                             headers=bearer(admin))).json() == {"count": 0}


async def test_unknown_route_is_404_and_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404, "not-found")
    # A trailing slash is an unknown path too: never a redirect to the Host the client sent.
    owner = uuid.uuid4()
    for method, path in (("GET", "/v1/users/me/favorites/count/"), ("GET", "/health/live/"),
                         ("PUT", f"/v1/users/me/favorites/{uuid.uuid4()}/")):
        slashed = await client.request(method, path, headers={**bearer(owner),
                                                              "Host": "evil.example"})
        assert_problem(slashed, 404, "not-found")
        assert "location" not in slashed.headers
    owner = uuid.uuid4()
    response = await client.post(f"/v1/users/{owner}/favorites/{uuid.uuid4()}",
                                 headers=bearer(owner))
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "DELETE, GET, HEAD, PUT"
    listing = await client.delete("/v1/users/me/favorites", headers=bearer(owner))
    assert listing.headers["allow"] == "GET, HEAD"


async def test_the_literal_routes_beside_a_product_id_answer_405_for_their_own_methods(
        client: httpx.AsyncClient) -> None:
    """``count`` and ``contains`` are not product ids: a PUT there is a 405 naming their own
    methods (it was a 422 "product_id must be a UUID")."""
    owner = uuid.uuid4()
    for method in ("PUT", "DELETE", "POST"):
        for path in ("count", "contains"):
            response = await client.request(method, f"/v1/users/me/favorites/{path}",
                                            headers=bearer(owner))
            assert_problem(response, 405, "method-not-allowed")
            assert response.headers["allow"] == "GET, HEAD"
    metrics = await client.post("/metrics")
    assert_problem(metrics, 405, "method-not-allowed")
    assert metrics.headers["allow"] == "GET, HEAD"


async def test_head_answers_every_get_without_a_body(client: httpx.AsyncClient) -> None:
    """The 405s advertise HEAD wherever GET is allowed, and it is served: the GET's status and
    headers, no body."""
    owner = uuid.uuid4()
    for path, headers in (("/health/live", {}), ("/.well-known/jwks.json", {}),
                          ("/v1/users/me/favorites", bearer(owner))):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert head.status_code == got.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]


async def test_a_request_that_takes_no_body_refuses_one(client: httpx.AsyncClient) -> None:
    """SPEC §3: bodies hold exactly the documented fields. Adding a favorite documents none:
    no body or ``{}`` is fine, anything else is refused as it would be elsewhere."""
    owner = uuid.uuid4()
    product = await new_product(client)
    path = f"/v1/users/me/favorites/{product}"
    json_type = {"Content-Type": "application/json"}
    cases = [({"Content-Type": "text/plain"}, b"hello", 415, "unsupported-media-type"),
             (json_type, b"{", 400, "malformed-request"),
             (json_type, b'{"x": 1}', 422, "validation-error")]
    for headers, body, status, kind in cases:
        response = await client.put(path, content=body, headers={**bearer(owner), **headers})
        assert_problem(response, status, kind)
    empty = await client.put(path, content=b"{}", headers={**bearer(owner), **json_type})
    assert empty.status_code == 201
    assert (await client.put(path, headers=bearer(owner))).status_code == 200
    registered = await client.put(f"/internal/v1/products/{uuid.uuid4()}", content=b'{"a": 1}',
                                  headers={**SERVICE, **json_type})
    assert_problem(registered, 422, "validation-error")
    # Nor does any DELETE: the same refusals, and nothing is removed, erased or deleted.
    deletes = [(path, bearer(owner)), (f"/internal/v1/users/{owner}", SERVICE),
               (f"/internal/v1/products/{product}", SERVICE)]
    for target, credentials in deletes:
        for headers, body, status, kind in cases:
            refused = await client.request("DELETE", target, content=body,
                                           headers={**credentials, **headers})
            assert_problem(refused, status, kind)
    assert (await client.get(path, headers=bearer(owner))).status_code == 200
    assert (await client.get("/v1/users/me/favorites/count",
                             headers=bearer(owner))).json() == {"count": 1}
    removed = await client.request("DELETE", path, content=b"{}",
                                   headers={**bearer(owner), **json_type})
    assert removed.status_code == 204


async def test_body_over_1kb_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"refresh_token": "' + b"a" * 1100 + b'"}'
    response = await client.post("/v1/auth/refresh", content=body,
                                 headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")


async def test_chunked_body_over_1kb_is_refused_without_reading_it_all(
    client: httpx.AsyncClient,
) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(100):  # 10 KB in 100-byte chunks, no Content-Length
            sent.append(i)
            yield b"x" * 100

    labels = {"method": "POST", "path": "/v1/auth/refresh", "status": "413"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    response = await client.post("/v1/auth/refresh", content=chunks(),
                                 headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert len(sent) <= 12  # stopped just past 1 KB
    # Refused before routing, and still counted under its route, not as "unmatched".
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


async def test_non_json_body_is_415_malformed_is_400_extra_fields_422(
    client: httpx.AsyncClient,
) -> None:
    user = str(uuid.uuid4())
    wrong_type = await client.post("/v1/auth/tokens", content=b"user_id=1",
                                   headers={**SERVICE, "Content-Type": "text/plain"})
    assert_problem(wrong_type, 415, "unsupported-media-type")
    malformed = await client.post("/v1/auth/tokens", content=b'{"user_id": ',
                                  headers={**SERVICE, "Content-Type": "application/json"})
    assert_problem(malformed, 400, "malformed-request")
    extra = await client.post("/v1/auth/tokens", headers=SERVICE,
                              json={"user_id": user, "roles": ["user"], "admin": True})
    problem = assert_problem(extra, 422, "validation-error")
    assert "admin: unknown field" in problem["detail"]
    not_object = await client.post("/v1/auth/tokens", headers=SERVICE, json=[user])
    assert_problem(not_object, 422, "validation-error")
    bad_role = await client.post("/v1/auth/tokens", headers=SERVICE,
                                 json={"user_id": user, "roles": ["root"]})
    assert_problem(bad_role, 422, "validation-error")


async def test_a_name_given_twice_in_a_body_is_422(client: httpx.AsyncClient) -> None:
    """Which ``user_id`` a token is for must not depend on which JSON parser reads the body."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    json_type = {"Content-Type": "application/json"}
    for body in (f'{{"user_id": "{first}", "roles": ["user"], "user_id": "{second}"}}',
                 f'{{"user_id": "{first}", "roles": ["user"], "roles": ["admin"]}}'):
        twice = await client.post("/v1/auth/tokens", content=body.encode(),
                                  headers={**SERVICE, **json_type})
        assert "given more than once" in assert_problem(twice, 422, "validation-error")["detail"]
    once = await client.post("/v1/auth/tokens", headers=SERVICE,
                             json={"user_id": first, "roles": ["user"]})
    assert once.status_code == 201


async def test_invalid_uuids_are_422(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    for path in ("/v1/users/not-a-uuid/favorites", f"/v1/users/me/favorites/{'1' * 31}",
                 f"/v1/users/{'%D9%A1' * 32}/favorites",  # 32 Arabic-Indic ones
                 "/v1/products/xyz/favorites/count"):
        response = await client.get(path, headers=bearer(owner))
        assert_problem(response, 422, "validation-error")
    # Spellings uuid.UUID would take: a misplaced hyphen, a sign, "_" between digits.
    product = uuid.uuid4().hex
    for spelling in (f"{product[:9]}-{product[9:12]}-{product[12:16]}-{product[16:20]}-"
                     f"{product[20:]}", "+" + product[1:], product[:1] + "_" + product[2:]):
        put = await client.put(f"/v1/users/me/favorites/{spelling}", headers=bearer(owner))
        assert "product_id must be a UUID" in assert_problem(put, 422, "validation-error")["detail"]


async def test_request_id_is_kept_when_valid_and_replaced_otherwise(
    client: httpx.AsyncClient,
) -> None:
    kept = await client.get("/health/live", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert kept.headers["x-request-id"] == "abc.DEF_123-x"
    for bad in ("has space", "x" * 129, "<script>", "\u00e9".encode()):
        replaced = await client.get("/health/live", headers={"X-Request-ID": bad})
        assert replaced.headers["x-request-id"] != bad
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    new = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(50)}
    assert len(new) == 50  # one of its own per request


async def test_security_headers_on_success_and_error(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/health/live"), await client.get("/v1/users/me/favorites")):
        headers = response.headers
        assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"


@pytest.fixture
async def capped(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, tmp_path, max_favorites_per_user=2))
    async for c in started(app):
        yield c


async def test_per_user_cap_is_409(capped: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    products = [await new_product(capped) for _ in range(3)]
    for product in products[:2]:
        assert (await capped.put(f"/v1/users/me/favorites/{product}",
                                 headers=bearer(owner))).status_code == 201
    response = await capped.put(f"/v1/users/me/favorites/{products[2]}", headers=bearer(owner))
    assert_problem(response, 409, "favorites-limit-reached")
    again = await capped.put(f"/v1/users/me/favorites/{products[0]}", headers=bearer(owner))
    assert again.status_code == 200  # re-adding an existing one is not "one more"
    count = await capped.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 2}


async def test_database_down_is_503_and_not_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:5999/none", tmp_path))
    async for c in started(app):
        capsys.readouterr()
        metrics.favorites_ready.set(1)
        ready = await c.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unavailable"
        assert ready.headers["retry-after"]
        # What the alert FavoritesServiceDown reads: up stays 1, no user request arrives to fail.
        assert REGISTRY.get_sample_value("favorites_ready") == 0
        live = await c.get("/health/live")
        assert live.status_code == 200
        response = await c.get("/v1/users/me/favorites",
                               headers={"Authorization": f"Bearer {token(uuid.uuid4())}"})
        assert_problem(response, 503, "dependency-unavailable")
        assert response.headers["retry-after"]
        # The probe reports a state (WARN); the request it could not serve failed (ERROR).
        levels = {line["message"]: line["level"] for line in map(json.loads, (
            text for text in capsys.readouterr().out.splitlines() if text.startswith("{")))
            if line.get("operation") == "httpRequest"}
        assert levels == {"GET /health/ready 503": "WARN", "GET /health/live 200": "INFO",
                          "GET /v1/users/{user_id}/favorites 503": "ERROR"}


async def test_statement_timeout_is_503_not_500(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query cancelled by the 5 s (here 100 ms) statement timeout means the database is
    overloaded: 503 with Retry-After, not a 500. A read and a write."""
    from favorites.adapters.db import driver

    monkeypatch.setattr(driver, "COUNT_FOR_USER", "SELECT pg_sleep(1), $1::uuid")
    monkeypatch.setattr(driver, "REMOVE", "SELECT pg_sleep(1), $1::uuid, $2::uuid, $3::timestamptz,"
                                          " $4::text, $5::text, $6::text, $7::text, $8::text,"
                                          " $9::text")
    app = create_app(make_settings(postgres_url, tmp_path, database_statement_timeout_ms=100))
    async for c in started(app):
        for method, path in (("GET", "/v1/users/me/favorites/count"),
                             ("DELETE", f"/v1/users/me/favorites/{uuid.uuid4()}")):
            response = await c.request(method, path, headers=bearer(uuid.uuid4()))
            assert_problem(response, 503, "dependency-unavailable")
            assert response.headers["retry-after"]


async def test_a_programming_error_in_sql_stays_a_500(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only "cannot serve now" errors become 503; a broken query is a bug and says so, without
    the database's message. A read and a write on the driver, and a write through SQLAlchemy."""
    import sqlalchemy as sa

    from favorites.adapters.db import driver
    from favorites.adapters.db.repository import SqlProductsRepository

    async def broken_write(self: SqlProductsRepository, *_: object) -> bool:
        await self._conn.execute(sa.text("SELECT no_such_column FROM favorites"))
        return False

    monkeypatch.setattr(driver, "COUNT_FOR_USER",
                        "SELECT no_such_column FROM favorites WHERE user_id = $1")
    monkeypatch.setattr(driver, "REMOVE", "DELETE FROM favorites WHERE no_such_column = $1"
                                          " AND product_id = $2 RETURNING product_id")
    monkeypatch.setattr(SqlProductsRepository, "upsert", broken_write)
    app = create_app(make_settings(postgres_url, tmp_path))
    async for c in started(app):
        for method, path, headers in (
            ("GET", "/v1/users/me/favorites/count", bearer(uuid.uuid4())),
            ("DELETE", f"/v1/users/me/favorites/{uuid.uuid4()}", bearer(uuid.uuid4())),
            ("PUT", f"/internal/v1/products/{uuid.uuid4()}", SERVICE),
        ):
            response = await c.request(method, path, headers=headers)
            body = assert_problem(response, 500, "internal-error")
            assert "no_such_column" not in response.text
            assert body["detail"].startswith("the request failed")


async def test_a_read_on_a_connection_the_server_closed_is_503_and_the_connection_is_dropped(
    postgres_url: str, tmp_path: Path
) -> None:
    """A backend killed under a pooled connection (failover, restart, idle kill): that read is a
    503, and the dead connection is not handed to the next request."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    app = create_app(make_settings(postgres_url, tmp_path, database_pool_min=1,
                                   database_pool_max=1))
    async for c in started(app):
        owner = uuid.uuid4()
        assert (await c.get("/v1/users/me/favorites/count", headers=bearer(owner))).json() == {
            "count": 0}
        engine = app.state.container.engine
        async with engine.connect() as conn:  # the pool's only connection: find its backend
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        killer = create_async_engine(
            postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
        async with killer.connect() as conn:
            assert (await conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"),
                                       {"pid": pid})).scalar_one()
        await killer.dispose()
        response = await c.get("/v1/users/me/favorites/contains",
                               params={"product_ids": str(uuid.uuid4())}, headers=bearer(owner))
        assert_problem(response, 503, "dependency-unavailable")
        again = await c.get("/v1/users/me/favorites/contains",
                            params={"product_ids": str(uuid.uuid4())}, headers=bearer(owner))
        assert again.status_code == 200, again.text
        assert again.json() == {"product_ids": []}


def test_the_readme_lists_every_problem_type_and_no_other() -> None:
    """Clients switch on ``type``: the documented list is the code's list."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Problem types", 1)[1].split("\n## ", 1)[0]
    documented = {
        (int(status), slug)
        for status, slug in re.findall(r"^\| (\d{3}) \| `([a-z-]+)` \|", section, re.M)
    }
    assert documented == {(error.status, error.slug) for error in catalogue()}


@pytest.mark.parametrize("query", ["access_token=abc", "Token=abc", "%74oken=abc", "limit=5&KEY=1",
                                   "x%2Dapi%2Dkey=1"])
async def test_credentials_in_the_query_string_are_refused(client: httpx.AsyncClient,
                                                           query: str) -> None:
    response = await client.get(f"/v1/users/me/favorites?{query}", headers=bearer(uuid.uuid4()))
    assert_problem(response, 400, "malformed-request")


async def test_an_ordinary_query_string_is_not_mistaken_for_credentials(
        client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/users/me/favorites?limit=5", headers=bearer(uuid.uuid4()))
    assert response.status_code == 200
