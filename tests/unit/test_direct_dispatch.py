"""DirectDispatch: a DirectRoute's request skips the router's layers and is answered exactly as
the router would answer it; every other request goes down the usual stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.responses import PlainTextResponse

from favorites.entrypoints.http.direct import DirectDispatch, DirectRoute


class Refused(Exception):
    pass


class RefusedHarder(Refused):
    pass


class Unexpected(Exception):
    pass


def _app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    plain = APIRouter()
    direct = APIRouter(route_class=DirectRoute)

    @plain.get("/items/special")
    async def special(request: Request) -> Response:
        return PlainTextResponse(f"plain router={'router' in request.scope}")

    @direct.get("/items/{item_id:int}")
    async def item(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        if item_id == 1:
            raise RefusedHarder("one is refused")
        if item_id == 2:
            raise Unexpected("a bug")
        return PlainTextResponse(
            f"direct {item_id + 1} router={'router' in request.scope}")

    @direct.put("/items/{item_id:int}")
    async def put_item(request: Request) -> Response:
        return Response(status_code=204)

    async def on_refused(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"refused: {exc}", status_code=409)

    app.router.routes.extend([*plain.routes, *direct.routes])
    app.add_exception_handler(Refused, on_refused)
    app.add_middleware(DirectDispatch, routes=app.router.routes, handlers=app.exception_handlers)
    return app


@pytest.fixture
async def client() -> Any:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_a_direct_route_is_answered_without_the_router(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/41")
    assert (response.status_code, response.text) == (200, "direct 42 router=False")


async def test_a_route_the_router_would_pick_first_still_wins(client: httpx.AsyncClient) -> None:
    """``/items/special`` matches no ``int`` segment; a plain route declared first keeps its
    requests and goes through the router."""
    response = await client.get("/items/special")
    assert (response.status_code, response.text) == (200, "plain router=True")


async def test_the_method_picks_the_route(client: httpx.AsyncClient) -> None:
    assert (await client.put("/items/3")).status_code == 204


async def test_an_exception_is_answered_by_the_app_handler_of_its_nearest_class(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/items/1")
    assert (response.status_code, response.text) == (409, "refused: one is refused")


async def test_an_exception_without_a_handler_goes_on_up(client: httpx.AsyncClient) -> None:
    with pytest.raises(Unexpected, match="a bug"):
        await client.get("/items/2")


async def test_a_wrong_method_and_an_unknown_path_go_down_the_usual_stack(
    client: httpx.AsyncClient,
) -> None:
    wrong = await client.delete("/items/3")
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["allow"]  # the app's own 405 handler names them all
    assert (await client.get("/items/3/more")).status_code == 404
