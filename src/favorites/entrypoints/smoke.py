"""``favorites smoke``: the post-deployment smoke test and the synthetic monitor, over HTTP.

It does what a shop and a user do, against a running service, as a client: readiness, a product
registered in the local catalog (or one that exists, ``--product``), a token issued for a new
user, then add, list, contains, remove and list again. Then it cleans up whatever it made: the
user is erased (favorites, refresh token; audit rows pseudonymised) and a product it registered
is deleted. So it can run against production every few minutes and leave no trace but audit
rows, each of them as any erasure leaves them.

It needs a service client's API key with the scopes ``tokens:issue`` and ``users:erase`` (and
``products:write`` unless ``--product`` names one), read from ``FAVORITES_SMOKE_API_KEY``: never
an argument, which any user of the machine could read in the process list.

One line per step on stdout; the exit status is 0 when every step passed, 1 when one did not
(the steps after it are skipped, the clean-up still runs), 2 for a usage error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Where the key comes from (see the module doc).
API_KEY_VARIABLE = "FAVORITES_SMOKE_API_KEY"


class StepFailed(Exception):
    """A step's answer was not the one a working service gives."""


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str = ""

    def line(self) -> str:
        verdict = "ok  " if self.ok else "FAIL"
        return f"{verdict} {self.name:<14} {self.ms:8.1f} ms  {self.detail}".rstrip()


@dataclass
class Smoke:
    """One run: the client, what it made (to clean up), and the steps done so far."""

    http: httpx.Client
    api_key: str
    product: uuid.UUID | None
    user: uuid.UUID = field(default_factory=uuid.uuid4)
    steps: list[Step] = field(default_factory=list)
    registered: uuid.UUID | None = None
    token: str | None = None

    def step(self, name: str, action: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            detail, ok = action(), True
        except StepFailed as exc:
            detail, ok = str(exc), False
        except httpx.HTTPError as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.steps.append(Step(name, ok, (time.perf_counter() - started) * 1000, detail))
        return ok

    def call(self, method: str, path: str, expected: int, *, service: bool = False,
             body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"X-API-Key": self.api_key} if service else {}
        if not service and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        response = self.http.request(method, path, headers=headers, json=body)
        if response.status_code != expected:
            raise StepFailed(f"{method} {path}: {response.status_code}, expected {expected}: "
                             f"{_problem(response)}")
        return response

    # -- the steps -------------------------------------------------------------------------------

    def ready(self) -> str:
        response = self.http.get("/health/ready")
        status = _json(response).get("status")
        if response.status_code != 200 or status not in ("ready", "degraded"):
            raise StepFailed(f"GET /health/ready: {response.status_code} {status}")
        return str(status)

    def register(self) -> str:
        product = uuid.uuid4()
        self.call("PUT", f"/internal/v1/products/{product}", 201, service=True)
        self.product = self.registered = product
        return f"product {product}"

    def issue(self) -> str:
        response = self.call("POST", "/v1/auth/tokens", 201, service=True,
                             body={"user_id": str(self.user), "roles": ["user"]})
        self.token = str(_json(response)["access_token"])
        return f"user {self.user}"

    def add(self) -> str:
        self.call("PUT", f"/v1/users/me/favorites/{self.product}", 201)
        return ""

    def listed(self, present: bool) -> Callable[[], str]:
        def check() -> str:
            items = _json(self.call("GET", "/v1/users/me/favorites", 200)).get("items", [])
            found = [item.get("product_id") for item in items]
            if (str(self.product) in found) is not present:
                raise StepFailed(f"the list {'lacks' if present else 'still has'} the product: "
                                 f"{found}")
            return f"{len(found)} item{'' if len(found) == 1 else 's'}"
        return check

    def contains(self) -> str:
        answer = _json(self.call(
            "GET", f"/v1/users/me/favorites/contains?product_ids={self.product}", 200))
        if answer.get("product_ids") != [str(self.product)]:
            raise StepFailed(f"contains answered {answer}")
        return ""

    def remove(self) -> str:
        self.call("DELETE", f"/v1/users/me/favorites/{self.product}", 204)
        return ""

    def erase(self) -> str:
        self.call("DELETE", f"/internal/v1/users/{self.user}", 200, service=True)
        return f"user {self.user}"

    def forget(self) -> str:
        self.call("DELETE", f"/internal/v1/products/{self.registered}", 202, service=True)
        return f"product {self.registered}"


def run(base_url: str, api_key: str, product: uuid.UUID | None = None,
        timeout: float = 5.0) -> list[Step]:
    """Every step in order, stopping at the first that fails; then the clean-up."""
    with httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False,
                      trust_env=False, headers={"User-Agent": "favorites-smoke"}) as http:
        smoke = Smoke(http, api_key, product)
        plan: list[tuple[str, Callable[[], str]]] = [("ready", smoke.ready)]
        if product is None:
            plan.append(("register", smoke.register))
        plan += [("token", smoke.issue), ("add", smoke.add), ("list", smoke.listed(True)),
                 ("contains", smoke.contains), ("remove", smoke.remove),
                 ("list-empty", smoke.listed(False))]
        for name, action in plan:
            if not smoke.step(name, action):
                break
        if smoke.token is not None:
            smoke.step("erase-user", smoke.erase)
        if smoke.registered is not None:
            smoke.step("delete-product", smoke.forget)
        return smoke.steps


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        raise StepFailed(f"{response.request.method} {response.request.url.path}: "
                         f"{response.status_code}, not JSON") from None
    if not isinstance(value, dict):
        raise StepFailed(f"{response.request.url.path}: not a JSON object")
    return value


def _problem(response: httpx.Response) -> str:
    """The problem+json's title and detail, or the start of whatever else came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:120]
    if isinstance(body, dict):
        return " - ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
    return str(body)[:120]
