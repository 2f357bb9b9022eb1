"""``create_app()``: the ASGI application. Nothing connects at import time."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from favorites import bootstrap
from favorites.config import Settings, load_settings
from favorites.domain.errors import (
    DependencyUnavailable,
    FavoritesError,
    MethodNotAllowed,
    NotFound,
    ValidationFailed,
)
from favorites.entrypoints.http import draining, favorites, health, internal, tokens
from favorites.entrypoints.http.auth import ServiceClients
from favorites.entrypoints.http.cors import ProblemCORSMiddleware
from favorites.entrypoints.http.direct import DirectDispatch
from favorites.entrypoints.http.methods import allowed_methods, method_table
from favorites.entrypoints.http.middleware import BodyLimitMiddleware, EdgeMiddleware
from favorites.entrypoints.http.responses import problem
from favorites.entrypoints.http.schemas import Problem
from favorites.observability.middleware import ObservabilityMiddleware
from favorites.observability.setup import setup as setup_observability

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


ROUTERS = (favorites.router, tokens.router, internal.router, health.router)


def _allowed_methods(request: Request) -> list[str]:
    return allowed_methods(request.app.state.method_table, request.url.path)


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FavoritesError)
    return problem(exc, instance=request.url.path, request_id=_request_id(request))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: FavoritesError
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        error = MethodNotAllowed(f"{request.method} is not allowed here",
                                 headers={"Allow": ", ".join(allowed)})
    elif exc.status_code == 404:
        error = NotFound("no such resource")
    else:
        error = FavoritesError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
    return problem(error, instance=request.url.path, request_id=_request_id(request))


#: SQLSTATE classes that mean "the database cannot serve us right now", not "our bug":
#: 08 connection exception, 53 insufficient resources (too many connections, disk full),
#: 57 operator intervention (statement timeout 57014, shutdown, starting up), 40001/40P01.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def _database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, sa_exc.TimeoutError | ConnectionError | TimeoutError | OSError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", "") or "")
        if state:
            return state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or state in _RETRYABLE_SQLSTATES
        return isinstance(exc, sa_exc.OperationalError)  # SQLite: locked, I/O error
    return False


async def _on_dependency_down(request: Request, exc: Exception) -> Response:
    """A database that cannot answer now is a 503 with Retry-After; anything else is a bug (500)."""
    if not _database_unavailable(exc):
        raise exc
    detail = ("the database connection pool is exhausted" if isinstance(exc, sa_exc.TimeoutError)
              else "the database is unavailable")
    return problem(DependencyUnavailable(detail), instance=request.url.path,
                   request_id=_request_id(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return problem(ValidationFailed(detail), instance=request.url.path,
                   request_id=_request_id(request))


#: Net allocations of container objects between two young collections (CPython's default: 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Move everything built at start-up out of the collector's reach (``gc.freeze``), and
    collect the young generation less often.

    Measured on a worker under load: full (generation 2) collections took 40-155 ms, because
    they walked every module, route, SQLAlchemy and OpenTelemetry object built at start-up, none
    of which ever becomes garbage; each one was a p99 spike. Frozen, they are skipped, and a full
    collection only walks what requests have kept alive since (caches, pools).

    A request's objects live for a millisecond or two, but at the default threshold of 700 a
    young collection ran every few requests and walked those still in flight, promoting them to
    older generations that were then walked again: in the steady mixed benchmark the collector
    took 5.0-5.8 % of each worker's CPU (2,000 young and 16 full collections in 29 s of CPU).
    At 10,000 most of a request's objects are freed by their reference counts before a
    collection comes: 0.2-0.3 % (13-21 young collections, no full one). Pauses are of the same
    order: the longest of each worker 10.0-19.0 ms (a middle-generation collection, which now
    holds more) against 15.8-16.8 ms. The cost is at most that many objects, a few MB, waiting a
    little longer when they are in a cycle.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from Settings (read from the environment when not given)."""
    settings = settings or load_settings()
    observability = setup_observability(settings)  # JSON logs and tracing before anything logs
    container = bootstrap.build(settings)
    observability.instrument_services(container)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await observability.start()
        await container.start()
        settle_garbage_collector()
        uninstall = draining.install(lambda: setattr(container, "draining", True),
                                     settings.drain_seconds)
        try:
            yield
        finally:
            uninstall()
            await container.close()
            await observability.stop()

    docs = not settings.is_production
    app = FastAPI(
        title="favorites-service",
        version="0.1.0",
        summary="Users save products, see them on every device; grids show hearts and counts.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        responses=PROBLEM_RESPONSES,
        # A trailing slash is a 404 like any other unknown path, not a 307 whose absolute
        # Location Starlette builds from the client's own Host header (reflected, always http).
        redirect_slashes=False,
        # Our own middleware traces, counts and logs every request (observability/); FastAPI's
        # native telemetry would add a second span per request once a tracer provider is set,
        # and asks the OpenTelemetry providers about it on every request even when it is off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.container = container
    app.state.service_clients = ServiceClients(container.service_clients,
                                               settings.trusted_proxies)
    # The routes themselves, not the router: FastAPI matches an included router through a
    # wrapper per router and per route (about 5 % of a cached read); these routers have no
    # prefix, dependencies or state of their own for that wrapper to carry. They go ahead of the
    # interactive docs' routes, which FastAPI adds first outside production: a request is matched
    # against the routes in order, and the hot ones come first. No path of one matches the other.
    app.router.routes[:0] = [route for router in ROUTERS for route in router.routes]
    if not settings.is_production:  # production serves it on the admin port (favorites serve)
        app.add_route("/metrics", observability.metrics_endpoint, include_in_schema=False)
    app.state.method_table = method_table(app)
    app.add_exception_handler(FavoritesError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    for dependency_error in (sa_exc.DBAPIError, sa_exc.TimeoutError, ConnectionError,
                             TimeoutError):
        app.add_exception_handler(dependency_error, _on_dependency_down)
    # Innermost: the hot routes' handlers are called from here (see DirectDispatch).
    app.add_middleware(DirectDispatch, routes=app.router.routes, handlers=app.exception_handlers)
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "PUT", "DELETE", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            # What a browser client needs to read: the export's file name and why a token
            # was refused too.
            expose_headers=["X-Request-ID", "Location", "RateLimit-Limit", "RateLimit-Remaining",
                            "RateLimit-Reset", "Retry-After", "WWW-Authenticate",
                            "Content-Disposition"],
            max_age=600,
        )
    # Inside observability: a refused body is logged, counted and traced like any answer.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware)  # just inside the edge: the request id is known
    app.add_middleware(EdgeMiddleware, docs=docs, state=container)
    return app
