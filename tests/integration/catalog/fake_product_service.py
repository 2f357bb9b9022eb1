"""A real product service over real sockets, for the HTTP catalog's tests.

It speaks the contract of SPEC §5 (``GET /products/{id}``, ``GET /products?ids=…``) and can be
switched to misbehave (slow, trickling, 5xx, redirects, oversized or malformed bodies) or stopped
entirely. It runs uvicorn in a background thread on 127.0.0.1, on a free port of 18600-18699, and
records every request it receives so tests can tell whether a call reached it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests import helpers

PORTS = range(18600, 18700)
OVERSIZED = 300 * 1024

#: Batch bodies that break the contract, by name.
MALFORMED: dict[str, bytes] = {
    "not-json": b"<html>oops</html>",
    "truncated": b'{"items": [{"product_id": ',
    "a-list": b"[]",
    "no-items": b'{"products": []}',
    "items-not-a-list": b'{"items": {"product_id": "x"}}',
    "item-not-an-object": b'{"items": ["7d9f3b1e-0000-4000-8000-000000000001"]}',
    "no-product-id": b'{"items": [{"id": "7d9f3b1e-0000-4000-8000-000000000001"}]}',
    "product-id-not-a-uuid": b'{"items": [{"product_id": "not-a-uuid"}]}',
    "product-id-a-number": b'{"items": [{"product_id": 42}]}',
}


@dataclass(frozen=True)
class Seen:
    path: str
    query: str
    headers: dict[str, str]


def free_port() -> int:
    return helpers.free_port(PORTS)


class FakeProductService:
    """``mode`` is one of: ok, slow, drip, error, unavailable, redirect, oversized,
    oversized-streamed, malformed (with ``malformed`` naming a body of MALFORMED), teapot."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.known: set[UUID] = set()
        self.extra_listed: set[UUID] = set()
        self.requests: list[Seen] = []
        self.reset()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/products", self._batch),
            Route("/products/{product_id}", self._single),
            Route("/moved/{rest:path}", self._moved),
        ])

    def reset(self) -> None:
        self.mode = "ok"
        self.malformed = "not-json"
        self.delay = 1.0
        self.known.clear()
        self.extra_listed.clear()
        self.requests.clear()

    def hits(self, prefix: str = "/products") -> int:
        return sum(1 for seen in self.requests if seen.path.startswith(prefix))

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="off", http="h11", ws="none",
                                loop="asyncio", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-product-service",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake product service did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            assert not self._thread.is_alive(), "fake product service did not stop"
        self._server = self._thread = None

    # -- handlers ----------------------------------------------------------------------------

    async def _single(self, request: Request) -> Response:
        self._record(request)
        misbehaviour = await self._misbehave(request)
        if misbehaviour is not None:
            return misbehaviour
        try:
            product_id = UUID(request.path_params["product_id"])
        except ValueError:
            return Response(status_code=404)
        if product_id in self.known:
            return Response(orjson.dumps({"product_id": str(product_id), "name": "A thing"}),
                            media_type="application/json")
        return Response(b'{"detail": "no such product"}', status_code=404,
                        media_type="application/json")

    async def _batch(self, request: Request) -> Response:
        self._record(request)
        misbehaviour = await self._misbehave(request)
        if misbehaviour is not None:
            return misbehaviour
        asked = request.query_params.get("ids", "")
        ids = [UUID(part) for part in asked.split(",") if part]
        if not ids or len(ids) > 100:
            return Response(status_code=400)
        listed = [pid for pid in ids if pid in self.known] + sorted(self.extra_listed)
        body = {"items": [{"product_id": str(pid), "name": "A thing"} for pid in listed]}
        return Response(orjson.dumps(body), media_type="application/json")

    async def _moved(self, request: Request) -> Response:
        self._record(request)
        return Response(b'{"items": []}', media_type="application/json")

    def _record(self, request: Request) -> None:
        self.requests.append(Seen(request.url.path, request.url.query, dict(request.headers)))

    async def _misbehave(self, request: Request) -> Response | None:
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(self.delay)
        elif mode == "drip":
            return StreamingResponse(self._drip(), media_type="application/json")
        elif mode == "error":
            return Response(b"boom", status_code=500)
        elif mode == "unavailable":
            return Response(b"down", status_code=503, headers={"Retry-After": "30"})
        elif mode == "teapot":
            return Response(b"", status_code=418)
        elif mode == "redirect":
            target = f"/moved{request.url.path}"
            if request.url.query:
                target += f"?{request.url.query}"
            return Response(status_code=302, headers={"Location": target})
        elif mode == "oversized":
            pad = b"x" * OVERSIZED
            return Response(b'{"items": [], "pad": "' + pad + b'"}', media_type="application/json")
        elif mode == "oversized-streamed":
            return StreamingResponse(self._flood(), media_type="application/json")
        elif mode == "malformed":
            return Response(MALFORMED[self.malformed], media_type="application/json")
        return None

    async def _drip(self) -> AsyncIterator[bytes]:
        """A byte every 0.1 s: never idle long enough for a read timeout, yet never done."""
        yield b'{"items": ['
        for _ in range(100):
            await asyncio.sleep(0.1)
            yield b" "
        yield b"]}"

    async def _flood(self) -> AsyncIterator[bytes]:
        """No Content-Length: only counting while reading can stop this one."""
        yield b'{"items": [], "pad": "'
        for _ in range(OVERSIZED // 16384 + 1):
            yield b"x" * 16384
        yield b'"}'
