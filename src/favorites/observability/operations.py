"""Business operations: one log line and one ``favorites_operations_total`` count per use case.

The service layer stays free of all of this: ``instrument_services`` wraps the use-case methods of
the built services (in the HTTP app's start-up), reading the user and product from the method's
own parameters (``user_id``, ``product_id``, ``principal``), located once at start-up.

Outcomes: ``success``; ``client_error`` for an expected refusal (a ``FavoritesError`` below 500:
not found, forbidden, limit reached...), logged at INFO; ``error`` for anything else, logged at
ERROR with its stack trace (at WARN without one for a ``FavoritesError`` of 500 and more, such as
a dependency reported down).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from favorites.domain.errors import FavoritesError
from favorites.domain.models import Principal, PrincipalKind
from favorites.observability import logs, metrics
from favorites.observability.active_users import ActiveUsers
from favorites.observability.context import current_request


@dataclass(frozen=True, slots=True)
class Operation:
    label: str  #: the ``operation`` label of favorites_operations_total
    name: str  #: the ``operation`` field of the log line (the seed's style)
    done: str  #: the message of a successful call


OPERATIONS: dict[str, Operation] = {op.label: op for op in (
    Operation("add", "addFavorite", "Favorite added"),
    Operation("remove", "removeFavorite", "Favorite removed"),
    Operation("list", "listFavorites", "Favorites listed"),
    Operation("get", "getFavorite", "Favorite read"),
    Operation("count", "countFavorites", "Favorites counted"),
    Operation("contains", "containsFavorites", "Favorites checked"),
    Operation("product_count", "countProductFavorites", "Product favorites counted"),
    Operation("bulk", "bulkFavorites", "Favorites changed in bulk"),
    Operation("export", "exportFavorites", "Favorites exported"),
    Operation("erase_user", "eraseUser", "User erased"),
    Operation("register_product", "registerProduct", "Product registered"),
    Operation("delete_product", "deleteProduct", "Product deleted"),
    Operation("issue_token", "issueToken", "Tokens issued"),
    Operation("refresh_token", "refreshToken", "Tokens refreshed"),
    Operation("logout", "logout", "Logged out"),
)}
assert set(OPERATIONS) == set(metrics.OPERATIONS)

#: Container attribute -> {method name: operation label}.
SERVICE_OPERATIONS: dict[str, dict[str, str]] = {
    "favorites": {"add": "add", "remove": "remove", "list_page": "list", "get": "get",
                  "count": "count", "contains": "contains", "count_for_product": "product_count",
                  "bulk": "bulk", "export": "export"},
    "users": {"erase": "erase_user"},
    "products": {"register": "register_product", "delete": "delete_product"},
    "tokens": {"issue": "issue_token", "refresh": "refresh_token", "logout": "logout"},
}

AsyncMethod = Callable[..., Awaitable[Any]]


def _position(signature: inspect.Signature, name: str) -> int | None:
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.name == name:
            return index
    return None


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int | None,
              name: str) -> Any:
    if index is not None and index < len(args):
        return args[index]
    return kwargs.get(name)


def observe(service: object, name: str, operation: Operation,
            active_users: ActiveUsers) -> AsyncMethod:
    """``service.name`` observed as ``operation``.

    The method is looked up on the class at each call (not bound once here), so replacing it on
    the class (a test's monkeypatch) still goes through the observation.
    """
    cls = type(service)
    signature = inspect.signature(getattr(service, name))  # bound: ``self`` is not counted
    user_at = _position(signature, "user_id")
    product_at = _position(signature, "product_id")
    principal_at = _position(signature, "principal")
    counters = {status: metrics.operation_counter(operation.label, status)
                for status in metrics.OPERATION_STATUSES}
    log = logs.log_request_event
    label = operation.name

    @functools.wraps(getattr(cls, name))
    async def observed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        principal = _argument(args, kwargs, principal_at, "principal")
        user_id = _argument(args, kwargs, user_at, "user_id")
        product_id = _argument(args, kwargs, product_at, "product_id")
        # userId is who acts: the signed-in user (an admin too), else the user acted upon (a
        # service client erasing a user or issuing their tokens).
        if (isinstance(principal, Principal) and principal.kind is PrincipalKind.USER
                and principal.user_id is not None):
            user_id = principal.user_id
            active_users.seen(user_id)
        user_id = user_id if isinstance(user_id, UUID) else None
        product_id = product_id if isinstance(product_id, UUID) else None
        request = current_request.get()
        if request is not None:
            request.user_id = user_id or request.user_id
            request.product_id = product_id or request.product_id
        try:
            result = await getattr(cls, name)(service, *args, **kwargs)
        except FavoritesError as error:
            ms = round((time.perf_counter() - started) * 1000, 3)
            if error.status >= 500:
                counters["error"].inc()
                log(logging.WARNING, f"{label} failed: {error.slug}", label, user_id=user_id,
                    product_id=product_id, duration_ms=ms, status=None, path=None)
            else:
                counters["client_error"].inc()
                log(logging.INFO, f"{label} refused: {error.slug}", label, user_id=user_id,
                    product_id=product_id, duration_ms=ms, status=None, path=None)
            raise
        except Exception as error:
            ms = round((time.perf_counter() - started) * 1000, 3)
            counters["error"].inc()
            log(logging.ERROR, f"{label} failed: {type(error).__name__}", label,
                user_id=user_id, product_id=product_id, duration_ms=ms, status=None, path=None,
                exc_info=error)
            raise
        counters["success"].inc()
        log(logging.INFO, operation.done, label, user_id=user_id, product_id=product_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3), status=None, path=None)
        return result

    return observed


def instrument(service: object, methods: Mapping[str, str], active_users: ActiveUsers) -> None:
    """Replace ``service``'s use-case methods (name -> operation label) by observed ones."""
    for method_name, label in methods.items():
        if method_name in vars(service):
            continue  # already observed (the container was instrumented before)
        setattr(service, method_name,
                observe(service, method_name, OPERATIONS[label], active_users))


def instrument_services(container: object, active_users: ActiveUsers) -> None:
    """Observe every use case of the container's services (see ``SERVICE_OPERATIONS``)."""
    for attribute, methods in SERVICE_OPERATIONS.items():
        instrument(getattr(container, attribute), methods, active_users)
