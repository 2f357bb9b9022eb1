"""A whole scenario against the real served process, then grep its logs for every secret used.

Anchors: ASVS 7.1.1 (no credentials in logs), OWASP API8:2023; the redaction step lives in
src/favorites/observability/logs.py and redaction.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_served import Served, _serve, clean_env

KEY = "fav_scenario-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    clients = [{"name": "identity", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "cidrs": ["127.0.0.0/8"],
                "scopes": ["tokens:issue", "users:erase", "products:write"]}]
    env = clean_env(FAVORITES_SERVICE_CLIENTS=json.dumps(clients), FAVORITES_LOG_LEVEL="DEBUG")
    yield from _serve(tmp_path_factory.mktemp("secrets"), env=env)


def test_scenario_leaves_no_secret_in_the_logs(served: Served) -> None:
    base = served.base
    secrets: list[str] = [KEY]
    request_ids: list[str] = []

    def record(response: httpx.Response) -> httpx.Response:
        request_ids.append(response.headers["x-request-id"])
        return response

    with httpx.Client(base_url=base, timeout=10) as http:
        service = {"X-API-Key": KEY}
        user = uuid.uuid4()
        product = uuid.uuid4()
        record(http.put(f"/internal/v1/products/{product}", headers=service))
        issued = record(http.post("/v1/auth/tokens", headers=service,
                                  json={"user_id": str(user), "roles": ["user"]})).json()
        secrets += [issued["access_token"], issued["refresh_token"]]
        auth = {"Authorization": f"Bearer {issued['access_token']}",
                "Cookie": "session=cookie-secret-value"}
        secrets.append("cookie-secret-value")
        record(http.put(f"/v1/users/me/favorites/{product}", headers=auth))
        record(http.get("/v1/users/me/favorites", headers=auth))
        rotated = record(http.post("/v1/auth/refresh",
                                   json={"refresh_token": issued["refresh_token"]})).json()
        secrets += [rotated["access_token"], rotated["refresh_token"]]
        record(http.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]}))
        record(http.get("/v1/users/me/favorites",
                        headers={"Authorization": f"Bearer {issued['access_token']}x"}))
        record(http.post(f"/v1/auth/tokens?api_key={KEY}", headers=service,
                         json={"user_id": str(user), "roles": ["user"]}))
        record(http.post("/v1/auth/logout",
                         headers={"Authorization": f"Bearer {rotated['access_token']}"},
                         json={"refresh_token": rotated["refresh_token"]}))
        record(http.delete(f"/internal/v1/users/{user}", headers=service))

    served.process.terminate()
    served.process.wait(timeout=30)
    logs = (Path(served.cwd) / "serve.log").read_text()
    for secret in secrets:
        assert secret not in logs
        # Not even a recognisable fragment: a JWT's claims or signature. (Its header, the
        # algorithm and key id, is the same for every token and is no secret.)
        for part in secret.split(".")[1:]:
            if len(part) >= 16:
                assert part not in logs
    # The logs are not simply empty: every request left its request id behind.
    for request_id in request_ids:
        assert request_id in logs
