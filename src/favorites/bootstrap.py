"""The composition root: turns Settings into adapters and services, and nothing else does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from favorites import embedded
from favorites.adapters.cache.null import NullFavoritesCache
from favorites.adapters.catalog.local import LocalCatalog
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.adapters.tokens.jwt import JwtCodec
from favorites.config import ServiceClient, Settings
from favorites.domain.cursor import CursorCodec
from favorites.service_layer.clock import SystemClock
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import ProductsService
from favorites.service_layer.revocation import RevocationList
from favorites.service_layer.tokens import TokenService
from favorites.service_layer.users import UsersService


@dataclass
class Container:
    """Everything a request handler may use, built once per process."""

    settings: Settings
    database_url: str
    engine: AsyncEngine
    jwt: JwtCodec
    revocations: RevocationList
    favorites: FavoritesService
    products: ProductsService
    tokens: TokenService
    users: UsersService
    service_clients: tuple[ServiceClient, ...]
    draining: bool = False
    #: Extra readiness checks (cache, product service): name -> "ok" or a reason. Not fatal.
    readiness_probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        await self.revocations.start()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run work past the response (product purge); kept referenced and awaited at close."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self.revocations.stop()
        await self.engine.dispose()


def build_jwt(settings: Settings, defaults: embedded.EmbeddedDefaults) -> JwtCodec:
    common: dict[str, Any] = {
        "algorithm": settings.jwt_algorithm,
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
        "ttl_seconds": settings.access_token_ttl_seconds,
        "leeway_seconds": settings.jwt_leeway_seconds,
    }
    if settings.jwt_algorithm == "HS256":
        return JwtCodec(secret=defaults.jwt_secret, **common)
    assert settings.jwt_private_key_file is not None  # enforced by load_settings
    return JwtCodec.from_files(settings.jwt_private_key_file, settings.jwt_public_key_files,
                               **common)


def root_secret(settings: Settings, defaults: embedded.EmbeddedDefaults) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if defaults.jwt_secret is not None:
        return defaults.jwt_secret
    assert settings.jwt_private_key_file is not None
    return settings.jwt_private_key_file.read_bytes()


def build(settings: Settings, defaults: embedded.EmbeddedDefaults | None = None) -> Container:
    defaults = defaults or embedded.resolve(settings)
    clock = SystemClock()
    engine = create_engine(
        defaults.database_url,
        PoolSettings(settings.database_pool_min, settings.database_pool_max,
                     settings.database_statement_timeout_ms),
    )
    uow = SqlUnitOfWorkFactory(engine)
    cache = NullFavoritesCache()
    catalog = LocalCatalog(uow)
    jwt_codec = build_jwt(settings, defaults)
    root = root_secret(settings, defaults)
    revocations = RevocationList(uow, clock)
    return Container(
        settings=settings,
        database_url=defaults.database_url,
        engine=engine,
        jwt=jwt_codec,
        revocations=revocations,
        favorites=FavoritesService(
            uow, catalog, cache, CursorCodec(embedded.derive_key(root, "cursor")), clock,
            settings.max_favorites_per_user,
        ),
        products=ProductsService(uow, catalog, cache, clock),
        tokens=TokenService(uow, jwt_codec, revocations, clock,
                            settings.refresh_token_ttl_seconds),
        users=UsersService(uow, cache, clock, embedded.derive_key(root, "audit-pseudonym")),
        service_clients=defaults.service_clients,
    )
