"""/v1/auth/*: issue, refresh and revoke tokens; the JWKS for verifiers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from favorites.domain.ids import parse_uuid
from favorites.entrypoints.http.auth import (
    AppContainer,
    CurrentUser,
    LimitedByAddress,
    ServiceCaller,
)
from favorites.entrypoints.http.body import read_json, with_schema
from favorites.entrypoints.http.responses import JSONResponse
from favorites.entrypoints.http.schemas import RefreshRequest, TokenPairRead, TokenRequest

router = APIRouter(tags=["auth"])

@router.post("/v1/auth/tokens", status_code=201, response_model=TokenPairRead,
             openapi_extra=with_schema(TokenRequest),
             summary="Issue an access and refresh token for a user (service clients)")
async def issue_tokens(request: Request, client: ServiceCaller, app: AppContainer) -> Response:
    body = await read_json(request, TokenRequest)
    pair = await app.tokens.issue(client, parse_uuid(body.user_id, "user_id"), tuple(body.roles))
    return JSONResponse(pair.as_json(), status_code=201)


@router.post("/v1/auth/refresh", response_model=TokenPairRead, dependencies=[LimitedByAddress],
             openapi_extra=with_schema(RefreshRequest),
             summary="Trade a refresh token for a new pair (the old one is spent)")
async def refresh_tokens(request: Request, app: AppContainer) -> Response:
    body = await read_json(request, RefreshRequest)
    pair = await app.tokens.refresh(body.refresh_token, request.state.request_id)
    return JSONResponse(pair.as_json())


@router.post("/v1/auth/logout", status_code=204, openapi_extra=with_schema(RefreshRequest),
             summary="Revoke the refresh family and this access token")
async def logout(request: Request, principal: CurrentUser, app: AppContainer) -> Response:
    body = await read_json(request, RefreshRequest)
    await app.tokens.logout(principal, body.refresh_token, request.state.request_id)
    return Response(status_code=204)


@router.get("/.well-known/jwks.json", summary="Public signing keys (ES256/RS256)",
            dependencies=[LimitedByAddress])
async def jwks(app: AppContainer) -> Response:
    return JSONResponse(app.jwt.jwks(), headers={"Cache-Control": "public, max-age=300"})
