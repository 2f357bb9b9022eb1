"""One test (or a few) per OWASP API Security Top 10 (2023) item that applies to this service.

Each docstring names its anchor: OWASP API Security Top 10 2023 (APIn), OWASP ASVS 4.0.3
requirement, or the RFC. The rate limit (API4) is proven in test_rate_limit.py and
tests/integration/test_rate_limit_redis.py; the product-service client (API10) in
tests/integration/catalog/.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from favorites.adapters.db.driver import DriverFavoritesRepository
from favorites.adapters.db.repository import SqlFavoritesRepository
from favorites.entrypoints.http.app import create_app
from tests.conftest import JWT_SECRET, make_settings, started
from tests.helpers import SERVICE, assert_problem, bearer, new_product, token
from tests.security.conftest import Es256App, new_key

# --- API1:2023 Broken Object Level Authorization -------------------------------------------


async def test_bola_users_cannot_touch_each_others_favorites(client: httpx.AsyncClient) -> None:
    """API1:2023 BOLA; ASVS 4.2.1: every object access checks the caller owns the object."""
    owner, other = uuid.uuid4(), uuid.uuid4()
    product = await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    attempts = [
        ("GET", f"/v1/users/{owner}/favorites"),
        ("GET", f"/v1/users/{owner}/favorites/count"),
        ("GET", f"/v1/users/{owner}/favorites/{product}"),
        ("GET", f"/v1/users/{owner}/favorites/contains?product_ids={product}"),
        ("PUT", f"/v1/users/{owner}/favorites/{product}"),
        ("DELETE", f"/v1/users/{owner}/favorites/{product}"),
    ]
    for method, path in attempts:
        assert_problem(await client.request(method, path, headers=bearer(other)), 403, "forbidden")
    listed = await client.get("/v1/users/me/favorites", headers=bearer(owner))
    assert len(listed.json()["items"]) == 1


async def test_bola_logout_cannot_revoke_another_users_family(client: httpx.AsyncClient) -> None:
    """API1:2023 BOLA on tokens: a refresh token is only revocable by its owner."""
    victim = uuid.uuid4()
    issued = (await client.post("/v1/auth/tokens", headers=SERVICE,
                                json={"user_id": str(victim), "roles": ["user"]})).json()
    attack = await client.post("/v1/auth/logout", headers=bearer(uuid.uuid4()),
                               json={"refresh_token": issued["refresh_token"]})
    assert_problem(attack, 403, "forbidden")
    still = await client.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    assert still.status_code == 200


# --- API2:2023 Broken Authentication --------------------------------------------------------


def _claims(user: uuid.UUID, **over: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"iss": "favorites-service", "aud": "favorites", "sub": str(user),
                                 "roles": ["user"], "iat": now, "exp": now + 600,
                                 "jti": uuid.uuid4().hex, "typ": "access"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _rejected(client: httpx.AsyncClient, raw_token: str) -> None:
    response = await client.get("/v1/users/me/favorites",
                                headers={"Authorization": f"Bearer {raw_token}"})
    assert_problem(response, 401, "invalid-token")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_alg_none_is_rejected(client: httpx.AsyncClient) -> None:
    """API2:2023; RFC 8725 §3.1 (algorithm verification); ASVS 3.5.3: no unsigned tokens."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(uuid.uuid4())).encode())
    await _rejected(client, f"{header}.{payload}.")
    await _rejected(client, jwt.encode(_claims(uuid.uuid4()), None, algorithm="none"))  # type: ignore[arg-type]


async def test_wrong_key_and_altered_payload_are_rejected(client: httpx.AsyncClient) -> None:
    """API2:2023; ASVS 3.5.3: signatures are verified with our key only."""
    await _rejected(client, jwt.encode(_claims(uuid.uuid4()), "another-secret-" + "y" * 30,
                                       algorithm="HS256"))
    genuine = token(uuid.uuid4())
    header, payload, signature = genuine.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["roles"] = ["admin"]
    await _rejected(client, f"{header}.{_b64(json.dumps(forged).encode())}.{signature}")


@pytest.mark.parametrize(("name", "claims"), [
    ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}),
    ("not yet valid", {"nbf": int(time.time()) + 3600}),
    ("issued in the future", {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}),
    ("wrong issuer", {"iss": "evil"}),
    ("wrong audience", {"aud": "other-service"}),
    ("refresh typ", {"typ": "refresh"}),
    ("no typ", {"typ": None}),
    ("no jti", {"jti": None}),
    ("no exp", {"exp": None}),
    ("unknown role", {"roles": ["superuser"]}),
    ("subject not a user id", {"sub": "alice"}),
])
async def test_claims_are_enforced(client: httpx.AsyncClient, name: str,
                                   claims: dict[str, object]) -> None:
    """API2:2023; RFC 7519 §4.1 and RFC 8725 §3.8 to 3.11 (iss, aud, exp, nbf, typ)."""
    await _rejected(client, token(uuid.uuid4(), **claims))


async def test_refresh_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    """API2:2023; RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the family."""
    issued = (await client.post("/v1/auth/tokens", headers=SERVICE,
                                json={"user_id": str(uuid.uuid4()), "roles": ["user"]})).json()
    rotated = (await client.post("/v1/auth/refresh",
                                 json={"refresh_token": issued["refresh_token"]})).json()
    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    assert_problem(reuse, 401, "invalid-token")
    legit = await client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert_problem(legit, 401, "invalid-token")


async def test_access_token_is_dead_after_logout(client: httpx.AsyncClient) -> None:
    """API2:2023; ASVS 3.3.1: logout invalidates the session (access jti revoked until exp)."""
    issued = (await client.post("/v1/auth/tokens", headers=SERVICE,
                                json={"user_id": str(uuid.uuid4()), "roles": ["user"]})).json()
    auth = {"Authorization": f"Bearer {issued['access_token']}"}
    assert (await client.get("/v1/users/me/favorites", headers=auth)).status_code == 200
    await client.post("/v1/auth/logout", headers=auth,
                      json={"refresh_token": issued["refresh_token"]})
    await _rejected(client, issued["access_token"])


async def test_es256_tokens_rotate_by_kid_and_resist_algorithm_confusion(es256: Es256App) -> None:
    """API2:2023; RFC 8725 §2.1/§3.1 (HS/RS confusion), RFC 7517 (JWKS); key rotation by kid."""
    jwks = (await es256.client.get("/.well-known/jwks.json")).json()["keys"]
    assert len(jwks) == 2
    assert {k["alg"] for k in jwks} == {"ES256"}
    assert all("d" not in k for k in jwks)  # public halves only
    kids = [k["kid"] for k in jwks]
    user = uuid.uuid4()
    for key, kid in ((es256.current, kids[0]), (es256.previous, kids[1])):
        signed = jwt.encode(_claims(user), key.private, algorithm="ES256", headers={"kid": kid})
        ok = await es256.client.get("/v1/users/me/favorites",
                                    headers={"Authorization": f"Bearer {signed}"})
        assert ok.status_code == 200
    # HS256 "signed" with the public key bytes as the secret: the classic confusion attack.
    confused = jwt.api_jws.PyJWS()
    confused._algorithms["HS256"].prepare_key = lambda k: k  # type: ignore[method-assign]
    forged = confused.encode(json.dumps(_claims(user)).encode(), es256.current.public_pem,
                             algorithm="HS256", headers={"kid": kids[0]})
    await _rejected(es256.client, forged)
    unknown_kid = jwt.encode(_claims(user), es256.current.private, algorithm="ES256",
                             headers={"kid": "not-ours"})
    await _rejected(es256.client, unknown_kid)
    stranger = new_key()
    await _rejected(es256.client, jwt.encode(_claims(user), stranger.private, algorithm="ES256",
                                             headers={"kid": kids[0]}))


# --- API3:2023 Broken Object Property Level Authorization -----------------------------------


async def test_bodies_accept_exactly_the_documented_fields(client: httpx.AsyncClient) -> None:
    """API3:2023 (mass assignment); ASVS 5.1.2: unknown properties are refused, not ignored."""
    for body in ({"user_id": str(uuid.uuid4()), "roles": ["user"], "scopes": ["users:erase"]},
                 {"user_id": str(uuid.uuid4()), "roles": ["user", "admin"]},
                 {"refresh_token": "x" * 43, "user_id": str(uuid.uuid4())}):
        path = "/v1/auth/refresh" if "refresh_token" in body else "/v1/auth/tokens"
        response = await client.post(path, headers=SERVICE, json=body)
        assert_problem(response, 422, "validation-error")


async def test_responses_expose_only_documented_properties(client: httpx.AsyncClient) -> None:
    """API3:2023 (excessive data exposure): list items carry product_id and created_at only."""
    owner, product = uuid.uuid4(), await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    page = (await client.get("/v1/users/me/favorites", headers=bearer(owner))).json()
    assert set(page) == {"items", "next_cursor"}
    assert set(page["items"][0]) == {"product_id", "created_at"}


# --- API4:2023 Unrestricted Resource Consumption --------------------------------------------


async def test_body_page_and_batch_sizes_are_bounded(client: httpx.AsyncClient) -> None:
    """API4:2023; ASVS 13.1.3 / 12.1.1: body ≤ 1 KB, page ≤ 50, contains ≤ 100 ids."""
    big = {"refresh_token": "a" * 2000}
    assert_problem(await client.post("/v1/auth/refresh", json=big), 413, "payload-too-large")
    owner = uuid.uuid4()
    assert_problem(await client.get("/v1/users/me/favorites?limit=51", headers=bearer(owner)),
                   422, "validation-error")
    ids = ",".join(str(uuid.uuid4()) for _ in range(101))
    assert_problem(await client.get(f"/v1/users/me/favorites/contains?product_ids={ids}",
                                    headers=bearer(owner)), 422, "validation-error")


# --- API5:2023 Broken Function Level Authorization ------------------------------------------


async def test_function_level_authorization(client: httpx.AsyncClient) -> None:
    """API5:2023; ASVS 4.1.3: admin functions need admin, internal routes need a scoped key."""
    owner, product = uuid.uuid4(), await new_product(client)
    admin = bearer(uuid.uuid4(), ("admin",))
    assert_problem(await client.put(f"/v1/users/{owner}/favorites/{product}", headers=admin),
                   403, "forbidden")
    for method, path in (("DELETE", f"/internal/v1/users/{owner}"),
                         ("PUT", f"/internal/v1/products/{uuid.uuid4()}"),
                         ("DELETE", f"/internal/v1/products/{product}"),
                         ("POST", "/v1/auth/tokens")):
        for headers in (bearer(owner), admin):
            response = await client.request(method, path, headers=headers)
            assert_problem(response, 401, "invalid-api-key")


# --- API6:2023 Unrestricted Access to Sensitive Business Flows ------------------------------


async def test_favorites_per_user_are_capped(sqlite_url: str, tmp_path: Path) -> None:
    """API6:2023: scripted hoarding is capped per user (409 favorites-limit-reached)."""
    app = create_app(make_settings(sqlite_url, tmp_path, max_favorites_per_user=1))
    async for capped in started(app):
        owner = uuid.uuid4()
        first, second = await new_product(capped), await new_product(capped)
        await capped.put(f"/v1/users/me/favorites/{first}", headers=bearer(owner))
        response = await capped.put(f"/v1/users/me/favorites/{second}", headers=bearer(owner))
        assert_problem(response, 409, "favorites-limit-reached")


# --- API7:2023 Server Side Request Forgery --------------------------------------------------


async def test_only_uuids_reach_outgoing_lookups(client: httpx.AsyncClient) -> None:
    """API7:2023 SSRF: the product service URL is configuration only; ids are UUIDs, so no
    caller-controlled path or host reaches an outgoing request."""
    owner = uuid.uuid4()
    for product in ("..%2F..%2Fadmin", "http:%2F%2F169.254.169.254", "%2e%2e"):
        response = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
        assert response.status_code in (404, 422)
        assert response.headers["content-type"] == "application/problem+json"


# --- API8:2023 Security Misconfiguration ----------------------------------------------------


async def test_security_headers_everywhere(client: httpx.AsyncClient) -> None:
    """API8:2023; ASVS 14.4.1 to 14.4.7: HSTS, CSP, nosniff, frame denial, referrer, no-store."""
    responses = [await client.get("/health/live"), await client.get("/v1/users/me/favorites"),
                 await client.get("/nope"), await client.post("/v1/auth/refresh", content=b"x",
                                                              headers={"Content-Type": "text/plain"})]
    for response in responses:
        assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        assert "server" not in response.headers


async def test_cors_only_for_configured_origins(es256: Es256App, client: httpx.AsyncClient) -> None:
    """API8:2023; ASVS 14.5.3: CORS allow-list, never a wildcard or a reflected origin."""
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "PUT"}
    allowed = await es256.client.options("/v1/users/me/favorites", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    evil = await es256.client.options("/v1/users/me/favorites",
                                      headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    # Refused as every error is: problem+json with the request id and the security headers.
    refused = assert_problem(evil, 403, "forbidden")
    assert refused["request_id"] == evil.headers["x-request-id"]
    assert refused["instance"] == "/v1/users/me/favorites"
    assert "Disallowed CORS origin" in refused["detail"]
    assert evil.headers["x-content-type-options"] == "nosniff"
    bad_method = await es256.client.options(
        "/v1/users/me/favorites", headers={**preflight, "Access-Control-Request-Method": "PATCH"})
    assert "method" in assert_problem(bad_method, 403, "forbidden")["detail"]
    simple = await es256.client.get("/health/live", headers={"Origin": "https://shop.example"})
    exposed = {h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "www-authenticate", "content-disposition", "retry-after"} <= exposed
    plain = await es256.client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers
    unconfigured = await client.get("/health/live", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in unconfigured.headers


async def test_errors_never_leak_stack_traces_or_sql(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API8:2023; ASVS 7.4.1: a failure answers a generic problem, details stay in the logs."""

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("SELECT secret FROM favorites WHERE password = 'hunter2'")

    for repository in (SqlFavoritesRepository, DriverFavoritesRepository):  # SQLite, PostgreSQL
        monkeypatch.setattr(repository, "count_for_user", explode)
    response = await client.get("/v1/users/me/favorites/count", headers=bearer(uuid.uuid4()))
    body = assert_problem(response, 500, "internal-error")
    text = response.text
    for leak in ("SELECT", "hunter2", "Traceback", "RuntimeError", ".py"):
        assert leak not in text
    assert body["detail"].startswith("the request failed")


async def test_production_hides_docs_and_schema(sqlite_url: str, tmp_path: Path) -> None:
    """API8:2023 / API9:2023: no interactive docs or schema in production."""
    settings = make_settings(sqlite_url, tmp_path, env="production",
                             jwt_secret=JWT_SECRET)
    async for prod in started(create_app(settings)):
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert (await prod.get(path)).status_code == 404


async def test_unused_methods_are_refused(client: httpx.AsyncClient) -> None:
    """API8:2023: TRACE and other unlisted methods get 405 with Allow, not a reflection."""
    response = await client.request("TRACE", "/v1/users/me/favorites", headers=bearer(uuid.uuid4()))
    assert_problem(response, 405, "method-not-allowed")
    assert "TRACE" not in response.headers["allow"]


# --- API9:2023 Improper Inventory Management ------------------------------------------------


async def test_inventory_is_exactly_the_documented_api(client: httpx.AsyncClient) -> None:
    """API9:2023: the published schema lists the documented routes and nothing else."""
    paths = set((await client.get("/openapi.json")).json()["paths"])
    assert paths == {
        "/v1/users/{user_id}/favorites", "/v1/users/{user_id}/favorites/count",
        "/v1/users/{user_id}/favorites/contains", "/v1/users/{user_id}/favorites/{product_id}",
        "/v1/users/{user_id}/favorites/bulk", "/v1/users/{user_id}/favorites/export",
        "/v1/products/{product_id}/favorites/count", "/v1/auth/tokens", "/v1/auth/refresh",
        "/v1/auth/logout", "/.well-known/jwks.json", "/internal/v1/users/{user_id}",
        "/internal/v1/products/{product_id}", "/health/live", "/health/ready",
    }
