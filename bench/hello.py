"""A bare hello-world FastAPI app served exactly as ``favorites serve`` serves the real one.

``python -m bench.hello --port 18000 --workers 2`` runs ``favorites serve`` itself with
``uvicorn.run`` redirected to this module's app, so the uvicorn settings (loop, HTTP parser, worker
count, access log, timeouts) can never drift from the service's: the ``hello`` scenario measures the
framework and server floor on this machine, for a baseline ratio.
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

APP = "bench.hello:create_app"


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/hello")
    async def hello() -> Response:
        return JSONResponse({"hello": "world"})

    @app.get("/health/ready")
    async def ready() -> Response:
        return JSONResponse({"status": "ready"})

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from favorites.entrypoints import cli

    real_run = uvicorn.run

    def run_hello(app: Any, **kwargs: Any) -> None:
        real_run(APP, **kwargs)

    uvicorn.run = run_hello  # cmd_serve looks uvicorn.run up when it calls it
    return int(cli.main(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
