"""/v1/users/{user_id}/favorites and /v1/products/{product_id}/favorites/count.

These are the hot endpoints, so each takes the bare ``Request`` and reads its parameters itself,
and ``DirectRoute`` calls it without FastAPI's per-request dependency and parameter solving (see
there). The parameters are still documented in the OpenAPI schema (``openapi_extra``),
authentication is the first thing each handler does, and every value goes through the same
parsers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import QueryParams

from favorites.domain.access import resolve_user
from favorites.domain.errors import ValidationFailed
from favorites.domain.ids import parse_uuid
from favorites.domain.models import Principal
from favorites.domain.pages import render_page
from favorites.entrypoints.http.auth import app_container, authenticate_user
from favorites.entrypoints.http.body import read_json, refuse_body, with_schema
from favorites.entrypoints.http.direct import DirectRoute
from favorites.entrypoints.http.responses import JSONResponse
from favorites.entrypoints.http.schemas import (
    BulkRead,
    BulkRequest,
    ContainsRead,
    CountRead,
    FavoriteRead,
    FavoritesExport,
    FavoritesPage,
    favorite_read,
)
from favorites.service_layer.favorites import MAX_CONTAINS, MAX_PAGE

router = APIRouter(tags=["favorites"], route_class=DirectRoute)


class _ProductSegment(Convertor[str]):
    """A ``{product_id}`` segment that is not one of the literal routes beside it, so that
    ``PUT /v1/users/me/favorites/count`` is a 405 of the count route, not a product id to refuse."""

    regex = r"(?!(?:count|contains|bulk|export)$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("product_segment", _ProductSegment())
JSON = "application/json"


def _param(name: str, where: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": {"type": "string"}}


USER_ID = _param("user_id", "path", "A user id (UUID) or the literal `me`")
PRODUCT_ID = _param("product_id", "path", "A product id (UUID)")
LIMIT = _param("limit", "query", f"Page size, 1 to {MAX_PAGE} (default {MAX_PAGE})", required=False)
CURSOR = _param("cursor", "query", "`next_cursor` of the previous page", required=False)
PRODUCT_IDS = _param("product_ids", "query",
                     f"Comma-separated product ids, at most {MAX_CONTAINS}")


def documented(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"parameters": list(parameters)}


def _user(principal: Principal, request: Request) -> UUID:
    raw: str = request.path_params["user_id"]
    return resolve_user(principal, None if raw == "me" else parse_uuid(raw, "user_id"))


def _product(request: Request) -> UUID:
    return parse_uuid(request.path_params["product_id"], "product_id")


def _one(query: QueryParams, name: str) -> str | None:
    """A query parameter given at most once: with two, which one a client meant is a guess
    (``product_ids=a&product_ids=b`` would silently check only ``b``)."""
    values = query.getlist(name)
    if len(values) > 1:
        raise ValidationFailed(f"query.{name}: given more than once")
    return values[0] if values else None


def _limit(raw: str | None) -> int:
    if raw is None:
        return MAX_PAGE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationFailed(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


@router.get("/v1/users/{user_id}/favorites", response_model=FavoritesPage,
            summary="List favorites, newest first",
            openapi_extra=documented(USER_ID, LIMIT, CURSOR))
async def list_favorites(request: Request) -> Response:
    principal = await authenticate_user(request)
    limit, cursor = MAX_PAGE, None
    if request.scope["query_string"]:  # most lists have none: no parsing then
        query = request.query_params
        limit, cursor = _limit(_one(query, "limit")), _one(query, "cursor") or None
    page = await app_container(request).favorites.list_page(
        principal, _user(principal, request), limit, cursor, request.state.request_id,
    )
    return Response(render_page(page.rendered(), page.next_cursor), media_type=JSON)


@router.get("/v1/users/{user_id}/favorites/count", response_model=CountRead,
            summary="How many favorites a user has", openapi_extra=documented(USER_ID))
async def count_favorites(request: Request) -> Response:
    principal = await authenticate_user(request)
    count = await app_container(request).favorites.count(
        principal, _user(principal, request), request.state.request_id)
    return JSONResponse({"count": count})


@router.get("/v1/users/{user_id}/favorites/contains", response_model=ContainsRead,
            summary="Which of these products the user favorited (hearts for a product grid)",
            openapi_extra=documented(USER_ID, PRODUCT_IDS))
async def contains_favorites(request: Request) -> Response:
    principal = await authenticate_user(request)
    owner = _user(principal, request)
    product_ids = _one(request.query_params, "product_ids")
    if product_ids is None:
        raise ValidationFailed("query.product_ids: Field required")
    raw_ids = [part.strip() for part in product_ids.split(",") if part.strip()]
    if not raw_ids:
        raise ValidationFailed("product_ids must name at least one product")
    if len(raw_ids) > MAX_CONTAINS:
        raise ValidationFailed(f"product_ids takes at most {MAX_CONTAINS} ids")
    ids = [parse_uuid(raw, "product_ids") for raw in raw_ids]
    found = await app_container(request).favorites.contains(principal, owner, ids)
    return JSONResponse({"product_ids": [str(pid) for pid in found]})


@router.post("/v1/users/{user_id}/favorites/bulk", response_model=BulkRead,
             summary="Add and remove several favorites at once, all or nothing "
                     "(enable_favorites_v2)",
             openapi_extra={**documented(USER_ID), **with_schema(BulkRequest)})
async def bulk_favorites(request: Request) -> Response:
    principal = await authenticate_user(request)
    owner = _user(principal, request)
    body = await read_json(request, BulkRequest)
    result = await app_container(request).favorites.bulk(
        principal, owner,
        [parse_uuid(raw, "add") for raw in body.add],
        [parse_uuid(raw, "remove") for raw in body.remove],
        request.state.request_id,
    )
    return JSONResponse({"added": result.added, "removed": result.removed})


@router.get("/v1/users/{user_id}/favorites/export", response_model=FavoritesExport,
            summary="Every favorite of the user as one JSON document (GDPR access and "
                    "portability; enable_favorites_v2)",
            openapi_extra=documented(USER_ID))
async def export_favorites(request: Request) -> Response:
    principal = await authenticate_user(request)
    owner = _user(principal, request)
    items = await app_container(request).favorites.export(principal, owner)
    document = {
        "user_id": owner,
        "exported_at": datetime.now(UTC),
        "count": len(items),
        "items": [{"product_id": f.product_id, "created_at": f.created_at} for f in items],
    }
    return JSONResponse(document, headers={
        "Content-Disposition": f'attachment; filename="favorites-{owner}.json"'})


@router.put("/v1/users/{user_id}/favorites/{product_id:product_segment}", response_model=FavoriteRead,
            status_code=201, responses={200: {"model": FavoriteRead}},
            summary="Add a favorite (idempotent)", openapi_extra=documented(USER_ID, PRODUCT_ID))
async def add_favorite(request: Request) -> Response:
    principal = await authenticate_user(request)
    owner = _user(principal, request)
    product = _product(request)
    await refuse_body(request)
    favorite, created = await app_container(request).favorites.add(
        principal, owner, product, request.state.request_id)
    if created:
        return JSONResponse(
            favorite_read(favorite), status_code=201,
            headers={"Location": f"/v1/users/{owner}/favorites/{product}"},
        )
    return JSONResponse(favorite_read(favorite))


@router.delete("/v1/users/{user_id}/favorites/{product_id:product_segment}", status_code=204,
               summary="Remove a favorite (idempotent)",
               openapi_extra=documented(USER_ID, PRODUCT_ID))
async def remove_favorite(request: Request) -> Response:
    principal = await authenticate_user(request)
    owner, product = _user(principal, request), _product(request)
    await refuse_body(request)
    await app_container(request).favorites.remove(
        principal, owner, product, request.state.request_id)
    return Response(status_code=204)


@router.get("/v1/users/{user_id}/favorites/{product_id:product_segment}", response_model=FavoriteRead,
            summary="One favorite", openapi_extra=documented(USER_ID, PRODUCT_ID))
async def get_favorite(request: Request) -> Response:
    principal = await authenticate_user(request)
    favorite = await app_container(request).favorites.get(
        principal, _user(principal, request), _product(request), request.state.request_id)
    return JSONResponse(favorite_read(favorite))


@router.get("/v1/products/{product_id}/favorites/count", response_model=CountRead,
            summary="How many users saved this product", openapi_extra=documented(PRODUCT_ID))
async def product_favorites_count(request: Request) -> Response:
    principal = await authenticate_user(request)
    count = await app_container(request).favorites.count_for_product(principal, _product(request))
    return JSONResponse({"count": count})
