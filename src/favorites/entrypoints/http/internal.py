"""/internal/v1/*: calls from other services (identity, catalog), authenticated by API key."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response

from favorites.domain.ids import parse_uuid
from favorites.entrypoints.http.auth import AppContainer, ServiceCaller
from favorites.entrypoints.http.body import refuse_body
from favorites.entrypoints.http.responses import JSONResponse
from favorites.entrypoints.http.schemas import ErasureRead, ProductRead
from favorites.service_layer.products import ProductsService

router = APIRouter(tags=["internal"])
log = logging.getLogger("favorites.internal")


@router.delete("/internal/v1/users/{user_id}", response_model=ErasureRead,
               summary="GDPR erasure of everything kept about a user (scope users:erase)")
async def erase_user(
    request: Request, client: ServiceCaller, app: AppContainer,
    user_id: str = Path(description="The user id (UUID)"),
) -> Response:
    user = parse_uuid(user_id, "user_id")
    await refuse_body(request)
    deleted = await app.users.erase(client, user, request.state.request_id)
    return JSONResponse({"deleted_favorites": deleted})


@router.put("/internal/v1/products/{product_id}", status_code=201, response_model=ProductRead,
            responses={200: {"model": ProductRead}},
            summary="Register a product in the local catalog (scope products:write)")
async def register_product(
    request: Request, client: ServiceCaller, app: AppContainer,
    product_id: str = Path(description="The product id (UUID)"),
) -> Response:
    product = parse_uuid(product_id, "product_id")
    await refuse_body(request)
    created = await app.products.register(client, product)
    return JSONResponse({"product_id": str(product), "status": "active"},
                        status_code=201 if created else 200)


@router.delete("/internal/v1/products/{product_id}", status_code=202, response_model=ProductRead,
               summary="Mark a product deleted; its favorites are removed in the background")
async def delete_product(
    request: Request, client: ServiceCaller, app: AppContainer,
    product_id: str = Path(description="The product id (UUID)"),
) -> Response:
    product = parse_uuid(product_id, "product_id")
    await refuse_body(request)
    await app.products.delete(client, product, request.state.request_id)
    app.spawn(_purge(app.products, product), name=f"purge-{product}")
    return JSONResponse({"product_id": str(product), "status": "deleting"}, status_code=202)


async def _purge(products: ProductsService, product_id: UUID) -> None:
    try:
        removed = await products.purge_favorites(product_id)
        log.info("product favorites purged",
                 extra={"productId": str(product_id), "removed": removed})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("product purge failed; repeat the DELETE, or the next start resumes it",
                      extra={"productId": str(product_id)})
