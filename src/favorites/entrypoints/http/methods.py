"""Which methods a path has: the ``Allow`` of a 405, for the app's own 405s and for the HTTP
protocol's answer to a method its parser does not know (which never reaches the app)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

MethodTable = list[tuple[re.Pattern[str], frozenset[str]]]


def method_table(app: FastAPI) -> MethodTable:
    """Path pattern -> methods of every route, built once at start-up; Starlette's 405 names
    only the first route's."""
    return [(route.path_regex, frozenset(route.methods)) for route in app.router.routes
            if isinstance(route, Route) and route.methods]


def allowed_methods(table: MethodTable, path: str) -> list[str]:
    """The methods ``path`` has (an empty list: no route has it), for a 405's ``Allow``."""
    methods: set[str] = set()
    for pattern, route_methods in table:
        if pattern.match(path):
            methods |= route_methods
    if "GET" in methods:
        methods.add("HEAD")  # served as GET without the body (EdgeMiddleware)
    return sorted(methods)


def method_table_of(app: Any) -> MethodTable | None:
    """The table ``create_app`` kept in the app's state, found through the ASGI wrappers a
    server puts around the app (each keeps the next one as ``app``)."""
    for _ in range(8):
        table = getattr(getattr(app, "state", None), "method_table", None)
        if table is not None:
            return table  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
    return None
