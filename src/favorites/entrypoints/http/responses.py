"""JSON and problem+json responses, serialised with orjson (no response-model validation cost)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from favorites.domain.errors import FavoritesError

PROBLEM_JSON = "application/problem+json"


class JSONResponse(Response):
    """orjson renders UUIDs and UTC datetimes (``...Z``) natively, in C: no per-item str()."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # default=str: asyncpg hands back its own UUID subclass, which orjson does not know.
        return orjson.dumps(content, default=str, option=orjson.OPT_UTC_Z)


def problem_body(
    *, type_uri: str, title: str, status: int, detail: str, instance: str, request_id: str
) -> bytes:
    return orjson.dumps(
        {
            "type": type_uri,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": instance,
            "request_id": request_id,
        }
    )


def problem(error: FavoritesError, *, instance: str, request_id: str) -> Response:
    body = problem_body(
        type_uri=error.type_uri, title=error.title, status=error.status, detail=error.detail,
        instance=instance, request_id=request_id,
    )
    return Response(body, status_code=error.status, headers=error.headers,
                    media_type=PROBLEM_JSON)
