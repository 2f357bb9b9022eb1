"""Starlette's CORS middleware, with a refused preflight answered as problem+json.

Starlette answers a preflight it refuses (an origin, method or header outside the allow-list)
with a bare ``text/plain`` 400. Every error of this API is problem+json (SPEC §3), so the refusal
is a 403 ``forbidden`` problem naming what was refused, with the request id; EdgeMiddleware,
outside this one, adds the security headers and ``X-Request-ID`` as to every response.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from favorites.domain.errors import Forbidden
from favorites.entrypoints.http.responses import PROBLEM_JSON, problem_body

_REFUSED = Forbidden()


class ProblemCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        kept = {name: value for name, value in response.headers.items()
                if name not in ("content-length", "content-type")}
        refused = bytes(response.body).decode()  # "Disallowed CORS origin, method"
        return _RefusedPreflight(f"{refused}: not allowed by FAVORITES_CORS_ORIGINS", kept)


class _RefusedPreflight(Response):
    """Rendered when sent, once the path and request id (in the scope) are known."""

    def __init__(self, detail: str, headers: dict[str, str]):
        super().__init__(status_code=_REFUSED.status)
        self.detail = detail
        self.kept = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: MutableMapping[str, Any] = scope.get("state", {})
        body = problem_body(type_uri=_REFUSED.type_uri, title=_REFUSED.title,
                            status=_REFUSED.status, detail=self.detail, instance=scope["path"],
                            request_id=str(state.get("request_id", "-")))
        await Response(body, status_code=_REFUSED.status, headers=self.kept,
                       media_type=PROBLEM_JSON)(scope, receive, send)
