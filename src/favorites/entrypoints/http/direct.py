"""``DirectRoute``: an APIRoute whose handler is called as it is, with the bare ``Request``.

FastAPI builds every route's handler from its signature: it solves dependencies and parameters,
validates, serialises the response model. For the hot endpoints that was about a tenth of a cached
read's CPU even with no dependencies at all, so they take the ``Request``, read what they need with
the same parsers, and return a finished ``Response``. ``get_route_handler`` is FastAPI's own hook
for replacing the handler; the route keeps everything else: path matching, the body-size limit,
exception handlers, and its OpenAPI operation (parameters via ``openapi_extra``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = list(inspect.signature(endpoint).parameters.values())
        if len(parameters) != 1 or parameters[0].name != "request":
            raise TypeError(f"{endpoint.__qualname__}: a DirectRoute handler takes (request)")
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler
