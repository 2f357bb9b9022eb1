"""``DirectRoute`` and ``DirectDispatch``: the hot endpoints without the framework's layers.

FastAPI builds every route's handler from its signature: it solves dependencies and parameters,
validates, serialises the response model. For the hot endpoints that was about a tenth of a cached
read's CPU even with no dependencies at all, so they take the ``Request``, read what they need with
the same parsers, and return a finished ``Response``. ``get_route_handler`` is FastAPI's own hook
for replacing the handler; the route keeps everything else: path matching, exception handlers,
and its OpenAPI operation (parameters via ``openapi_extra``).

Below the user middleware, a request still passed four more layers before such a handler ran:
Starlette's exception middleware, FastAPI's exit-stack middleware, the router, and the route's
own wrapper, which opens two exit stacks for dependencies with ``yield`` and wraps the handler in
the exception handlers a second time. A ``DirectRoute`` has no dependencies, so none of that has
work to do for it. ``DirectDispatch``, the innermost middleware, matches the request against the
app's routes in the router's order with the routes' own ``matches`` (Starlette's path and method
matching, path parameters included); when the route the router would pick is a ``DirectRoute``,
it calls the handler and answers an exception through the app's exception handlers, as those
layers would have. Any other request (another route, a 404, a 405) goes down the usual stack.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = list(inspect.signature(endpoint).parameters.values())
        if len(parameters) != 1 or parameters[0].name != "request":
            raise TypeError(f"{endpoint.__qualname__}: a DirectRoute handler takes (request)")
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


class DirectDispatch:
    """Calls a ``DirectRoute``'s handler straight from the middleware stack (see the module).

    Starlette builds its middleware on the first request, when every route and exception handler
    is in place. ``handlers`` are the app's: the ones its exception middleware applies are those
    keyed by class, without the 500 one (an unhandled error goes on to ``EdgeMiddleware``).
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute],
                 handlers: Mapping[Any, Callable[..., Any]]) -> None:
        self.app = app
        self._routes = routes
        self._handlers: dict[type[BaseException], ExceptionHandler] = {
            key: handler for key, handler in handlers.items()
            if isinstance(key, type) and key is not Exception}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self._routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    if isinstance(route, DirectRoute):
                        scope.update(child_scope)
                        await self._direct(route, scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)

    async def _direct(self, route: DirectRoute, scope: Scope, receive: Receive,
                      send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response: Response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler
        return None
