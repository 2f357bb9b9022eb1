"""The error catalogue: every failure a caller can meet, with its HTTP status and problem type.

One place per fact: the HTTP layer turns these into RFC 9457 problem+json without knowing any of
them by name, and the README's table of problem types is checked against this list by a test.
"""

from __future__ import annotations

from typing import ClassVar

PROBLEM_BASE = "https://favorites-service.dev/problems/"


class FavoritesError(Exception):
    """Base of every expected failure. ``slug`` becomes the problem ``type``."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, detail={self.detail!r})"


class MalformedRequest(FavoritesError):
    status, slug, title = 400, "malformed-request", "Malformed request"


class InvalidCursor(FavoritesError):
    status, slug, title = 400, "invalid-cursor", "Invalid cursor"


class InvalidToken(FavoritesError):
    status, slug, title = 401, "invalid-token", "Missing, invalid, expired or revoked credentials"

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class InvalidApiKey(FavoritesError):
    status, slug, title = 401, "invalid-api-key", "Missing or invalid API key"

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": 'ApiKey realm="favorites"'})


class Forbidden(FavoritesError):
    status, slug, title = 403, "forbidden", "Not allowed"


class AddressNotAllowed(FavoritesError):
    status, slug, title = 403, "ip-not-allowed", "Client address not allowed"


class ScopeMissing(FavoritesError):
    status, slug, title = 403, "scope-missing", "Scope missing"


class NotFound(FavoritesError):
    status, slug, title = 404, "not-found", "Not found"


class FavoriteNotFound(FavoritesError):
    status, slug, title = 404, "favorite-not-found", "Favorite not found"


class ProductNotFound(FavoritesError):
    status, slug, title = 404, "product-not-found", "Product not found"


class FeatureNotEnabled(FavoritesError):
    """The endpoint is behind a feature flag (rolled out per user) that is off for this user."""

    status, slug, title = 404, "feature-not-enabled", "Not enabled for this user"


class MethodNotAllowed(FavoritesError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class FavoritesLimitReached(FavoritesError):
    status, slug, title = 409, "favorites-limit-reached", "Favorites limit reached"


class CatalogIsExternal(FavoritesError):
    """Products are registered in the product service (FAVORITES_PRODUCT_SERVICE_URL), not here."""

    status, slug, title = 409, "catalog-is-external", "Products are managed by the product service"


class RequestTimeout(FavoritesError):
    status, slug, title = 408, "request-timeout", "Request head not received in time"


class PayloadTooLarge(FavoritesError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class HeadersTooLarge(FavoritesError):
    status, slug, title = 431, "request-header-fields-too-large", "Request headers too large"


class UnsupportedMediaType(FavoritesError):
    status, slug, title = 415, "unsupported-media-type", "Request body must be application/json"


class ValidationFailed(FavoritesError):
    status, slug, title = 422, "validation-error", "Validation failed"


class RateLimited(FavoritesError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None):
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class DependencyUnavailable(FavoritesError):
    status, slug, title = 503, "dependency-unavailable", "A dependency is unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def catalogue() -> list[type[FavoritesError]]:
    """Every error type, for docs and tests."""
    found: list[type[FavoritesError]] = []
    pending: list[type[FavoritesError]] = [FavoritesError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: (c.status, c.slug))
