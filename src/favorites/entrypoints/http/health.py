"""Probes for the orchestrator: no authentication, no rate limit, cheap."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from fastapi import APIRouter, Response

from favorites.entrypoints.http.auth import AppContainer
from favorites.entrypoints.http.responses import JSONResponse
from favorites.observability import metrics

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 2.0


@router.get("/health/live", summary="The process serves")
async def live() -> Response:
    return JSONResponse({"status": "live"})


@router.get("/health/ready", summary="This instance can take traffic")
async def ready(app: AppContainer) -> Response:
    if app.draining:  # the answer is known: no need to wait up to 2 s for the database
        metrics.favorites_ready.set(0)
        return JSONResponse({"status": "draining", "checks": {}}, status_code=503,
                            headers={"Retry-After": "5"})
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with app.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # any failure means not ready; the reason is in the logs
        checks["database"] = "unavailable"
    for name, probe in app.readiness_probes.items():
        checks[name] = await probe()
    if checks["database"] != "ok":
        status, code = "unavailable", 503
    elif any(value != "ok" for value in checks.values()):
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    metrics.favorites_ready.set(1 if code == 200 else 0)
    return JSONResponse({"status": status, "checks": checks}, status_code=code,
                        headers={"Retry-After": "5"} if code == 503 else None)
