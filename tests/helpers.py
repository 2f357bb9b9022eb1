"""Small helpers for HTTP tests: tokens, service headers, product registration."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import JWT_SECRET, SERVICE_KEY

SERVICE = {"X-API-Key": SERVICE_KEY}


def token(user_id: uuid.UUID, roles: tuple[str, ...] = ("user",), **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "favorites-service", "aud": "favorites", "sub": str(user_id),
        "roles": list(roles), "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex,
        "typ": "access",
    }
    payload.update(claims)
    kid = "hs-" + hashlib.sha256(JWT_SECRET.encode()).hexdigest()[:12]
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, JWT_SECRET,
                      algorithm="HS256", headers={"kid": kid})


def bearer(user_id: uuid.UUID, roles: tuple[str, ...] = ("user",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user_id, roles)}"}


async def new_product(client: httpx.AsyncClient) -> uuid.UUID:
    product = uuid.uuid4()
    response = await client.put(f"/internal/v1/products/{product}", headers=SERVICE)
    assert response.status_code == 201, response.text
    return product


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id"}
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


def wait_until_ready(base: str, process: subprocess.Popen[bytes] | subprocess.Popen[str],
                     log: Path, timeout: float = 30) -> None:
    """Poll a served process's /health/ready; fail with its log if it dies or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    pytest.fail("server did not become ready:\n" + log.read_text())


def port_is_free(port: int) -> bool:
    """Nothing listens on (or holds) ``port`` of 127.0.0.1 right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(ports: range, *, avoid: Collection[int] = (), shuffle: bool = False) -> int:
    """A free port of ``ports``. Each suite that starts servers has its own range, so fixtures
    of different suites never race for a port; ``shuffle`` makes two concurrent runs of the same
    suite unlikely to pick the same one."""
    candidates = list(ports)
    if shuffle:
        random.shuffle(candidates)
    for port in candidates:
        if port not in avoid and port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")
