"""/v1/users/{user_id}/favorites and /v1/products/{product_id}/favorites/count."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response

from favorites.domain.access import resolve_user
from favorites.domain.errors import ValidationFailed
from favorites.domain.ids import parse_uuid
from favorites.domain.pages import render_page
from favorites.entrypoints.http.auth import AppContainer, CurrentUser
from favorites.entrypoints.http.responses import JSONResponse
from favorites.entrypoints.http.schemas import (
    ContainsRead,
    CountRead,
    FavoriteRead,
    FavoritesPage,
    favorite_read,
)
from favorites.service_layer.favorites import MAX_CONTAINS, MAX_PAGE

router = APIRouter(tags=["favorites"])
JSON = "application/json"

UserPath = Path(description="A user id (UUID) or the literal `me`")
ProductPath = Path(description="A product id (UUID)")


def _user(principal: CurrentUser, raw: str) -> UUID:
    return resolve_user(principal, None if raw == "me" else parse_uuid(raw, "user_id"))


def _limit(raw: str | None) -> int:
    if raw is None:
        return MAX_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationFailed(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


@router.get("/v1/users/{user_id}/favorites", response_model=FavoritesPage,
            summary="List favorites, newest first")
async def list_favorites(
    request: Request,
    principal: CurrentUser,
    app: AppContainer,
    user_id: str = UserPath,
    limit: str | None = Query(None, description="Page size, 1 to 50 (default 50)"),
    cursor: str | None = Query(None, description="`next_cursor` of the previous page"),
) -> Response:
    page = await app.favorites.list_page(
        principal, _user(principal, user_id), _limit(limit), cursor or None,
        request.state.request_id,
    )
    return Response(render_page(page.rendered(), page.next_cursor), media_type=JSON)


@router.get("/v1/users/{user_id}/favorites/count", response_model=CountRead,
            summary="How many favorites a user has")
async def count_favorites(
    request: Request, principal: CurrentUser, app: AppContainer, user_id: str = UserPath
) -> Response:
    count = await app.favorites.count(principal, _user(principal, user_id),
                                      request.state.request_id)
    return JSONResponse({"count": count})


@router.get("/v1/users/{user_id}/favorites/contains", response_model=ContainsRead,
            summary="Which of these products the user favorited (hearts for a product grid)")
async def contains_favorites(
    principal: CurrentUser,
    app: AppContainer,
    user_id: str = UserPath,
    product_ids: str = Query(..., description=f"Comma-separated product ids, at most {MAX_CONTAINS}"),
) -> Response:
    raw_ids = [part.strip() for part in product_ids.split(",") if part.strip()]
    if not raw_ids:
        raise ValidationFailed("product_ids must name at least one product")
    if len(raw_ids) > MAX_CONTAINS:
        raise ValidationFailed(f"product_ids takes at most {MAX_CONTAINS} ids")
    ids = [parse_uuid(raw, "product_ids") for raw in raw_ids]
    found = await app.favorites.contains(principal, _user(principal, user_id), ids)
    return JSONResponse({"product_ids": [str(pid) for pid in found]})


@router.put("/v1/users/{user_id}/favorites/{product_id}", response_model=FavoriteRead,
            status_code=201, responses={200: {"model": FavoriteRead}},
            summary="Add a favorite (idempotent)")
async def add_favorite(
    request: Request,
    principal: CurrentUser,
    app: AppContainer,
    user_id: str = UserPath,
    product_id: str = ProductPath,
) -> Response:
    owner = _user(principal, user_id)
    product = parse_uuid(product_id, "product_id")
    favorite, created = await app.favorites.add(principal, owner, product,
                                                request.state.request_id)
    if created:
        return JSONResponse(
            favorite_read(favorite), status_code=201,
            headers={"Location": f"/v1/users/{owner}/favorites/{product}"},
        )
    return JSONResponse(favorite_read(favorite))


@router.delete("/v1/users/{user_id}/favorites/{product_id}", status_code=204,
               summary="Remove a favorite (idempotent)")
async def remove_favorite(
    request: Request,
    principal: CurrentUser,
    app: AppContainer,
    user_id: str = UserPath,
    product_id: str = ProductPath,
) -> Response:
    await app.favorites.remove(principal, _user(principal, user_id),
                               parse_uuid(product_id, "product_id"), request.state.request_id)
    return Response(status_code=204)


@router.get("/v1/users/{user_id}/favorites/{product_id}", response_model=FavoriteRead,
            summary="One favorite")
async def get_favorite(
    request: Request,
    principal: CurrentUser,
    app: AppContainer,
    user_id: str = UserPath,
    product_id: str = ProductPath,
) -> Response:
    favorite = await app.favorites.get(principal, _user(principal, user_id),
                                       parse_uuid(product_id, "product_id"),
                                       request.state.request_id)
    return JSONResponse(favorite_read(favorite))


@router.get("/v1/products/{product_id}/favorites/count", response_model=CountRead,
            summary="How many users saved this product")
async def product_favorites_count(
    principal: CurrentUser, app: AppContainer, product_id: str = ProductPath
) -> Response:
    count = await app.favorites.count_for_product(principal, parse_uuid(product_id, "product_id"))
    return JSONResponse({"count": count})
