"""The one list of settings. Every name here is part of the public contract (FAVORITES_*).

Values come from the environment, then a ``*_FILE`` variant (a mounted Kubernetes secret or a Vault
agent file) for every secret, then ``.env``. Unset means the embedded default: SQLite under
``./var``, in-process cache and limiter, a signing secret generated once (see ``bootstrap``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "FAVORITES_"

#: Settings that may carry credentials and so also accept ``FAVORITES_<NAME>_FILE``.
SECRET_FIELDS = frozenset(
    {"database_url", "database_replica_urls", "redis_url", "jwt_secret", "service_clients",
     "secret_key"}
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_RATE = re.compile(r"^\s*([1-9]\d*)\s*/\s*(second|minute|hour|day)\s*$")


class ServiceClient(BaseModel):
    """A machine caller (identity service, back office). Only the key's sha256 is configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    cidrs: tuple[IPNetwork, ...] = ()
    scopes: frozenset[Literal["tokens:issue", "users:erase", "products:write"]] = frozenset()

    @field_validator("key_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _SecretFileSource(PydanticBaseSettingsSource):
    """Reads ``FAVORITES_<NAME>_FILE`` for secret settings, so secrets never sit in the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_FIELDS:
            path = os.environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
            if path:
                try:
                    values[name] = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(
                        f"{ENV_PREFIX}{name.upper()}_FILE: cannot read {path!r}: {exc.strerror}"
                    ) from None
        return values


class ConfigError(Exception):
    """A setting that stops start-up; its message is one line naming the variable."""


class Settings(BaseSettings):
    """Validated once at start-up; components receive the values they need, never this object."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("var")

    database_url: str | None = None
    database_replica_urls: Annotated[list[str], NoDecode] = []
    database_pool_min: int = Field(10, ge=1, le=500)
    database_pool_max: int = Field(50, ge=1, le=1000)
    database_statement_timeout_ms: int = Field(5000, ge=100, le=600_000)
    #: After a committed write, that user's reads skip the replicas this long (read-your-writes);
    #: keep it above the replica lag you alert on.
    read_your_writes_seconds: float = Field(5.0, ge=0, le=300)

    redis_url: str | None = None
    redis_cluster: bool = False

    jwt_secret: SecretStr | None = None
    jwt_private_key_file: Path | None = None
    jwt_public_key_files: Annotated[list[Path], NoDecode] = []
    jwt_algorithm: Literal["HS256", "ES256", "RS256"] = "HS256"
    jwt_issuer: str = "favorites-service"
    jwt_audience: str = "favorites"
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    access_token_ttl_seconds: int = Field(3600, ge=60, le=86_400)
    refresh_token_ttl_seconds: int = Field(2_592_000, ge=3600, le=31_536_000)
    #: Keys cursors and audit pseudonyms; derived from the signing secret when unset.
    secret_key: SecretStr | None = None

    service_clients: list[ServiceClient] | None = None
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = []
    rate_limit: str = "100/minute"
    #: Per service client (identity, catalog): they act for many users, so 100/minute would cap
    #: sign-ins for the whole shop; still limited, so a leaked key cannot flood the service.
    service_rate_limit: str = "6000/minute"
    cors_origins: Annotated[list[str], NoDecode] = []

    product_service_url: str | None = None
    product_service_connect_timeout: float = Field(0.5, gt=0, le=30)
    product_service_read_timeout: float = Field(1.0, gt=0, le=60)

    flags_file: Path | None = None
    max_favorites_per_user: int = Field(10_000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(1024, ge=64, le=1_048_576)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    metrics_port: int = Field(9100, ge=1, le=65535)
    drain_seconds: float = Field(0.0, ge=0, le=120)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFileSource(settings_cls), dotenv_settings)

    @field_validator(
        "database_replica_urls", "trusted_proxies", "cors_origins", "jwt_public_key_files",
        mode="before",
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("database_url", "redis_url", "product_service_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql:", "postgres:",
                                                      "postgresql+asyncpg:", "sqlite+aiosqlite:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if value is not None and value.startswith("sqlite") and (
                "///" not in value or value.split("///", 1)[1] in ("", ":memory:")):
            raise ValueError("SQLite needs a file: sqlite:///path/to/favorites.db (one process "
                             "shares it; an in-memory database would not be)")
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _replica_scheme(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("postgresql:", "postgres:", "postgresql+asyncpg:")):
                raise ValueError("every replica must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("product_service_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("http://", "https://")):
                raise ValueError("must be an http:// or https:// URL")
            value = value.rstrip("/")
        return value

    @field_validator("rate_limit", "service_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not _RATE.match(value):
            raise ValueError("must look like 100/minute (at least 1, per second, minute, hour"
                             " or day)")
        return value.replace(" ", "")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an http(s) origin (wildcards are refused)")
        return [origin.rstrip("/") for origin in value]

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def rate_limit_parts(self) -> tuple[int, str]:
        match = _RATE.match(self.rate_limit)
        assert match is not None  # validated above
        return int(match.group(1)), match.group(2)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings or raise ConfigError with one line that names the offending variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}") from None
    if settings.database_pool_min > settings.database_pool_max:
        raise ConfigError(
            f"{ENV_PREFIX}DATABASE_POOL_MIN: must not exceed FAVORITES_DATABASE_POOL_MAX"
        )
    if settings.database_replica_urls and (
        settings.database_url is None or settings.database_url.startswith("sqlite")
    ):
        raise ConfigError(
            f"{ENV_PREFIX}DATABASE_REPLICA_URLS: replicas need a postgresql:// FAVORITES_DATABASE_URL"
        )
    if settings.redis_cluster and (settings.redis_url or "").startswith("unix://"):
        raise ConfigError(f"{ENV_PREFIX}REDIS_CLUSTER: a cluster needs redis:// or rediss:// hosts")
    if settings.jwt_algorithm != "HS256" and settings.jwt_private_key_file is None:
        raise ConfigError(
            f"{ENV_PREFIX}JWT_PRIVATE_KEY_FILE: required when FAVORITES_JWT_ALGORITHM="
            f"{settings.jwt_algorithm}"
        )
    if settings.jwt_secret is not None and len(settings.jwt_secret.get_secret_value()) < 32:
        # In every environment: HS256 wants a key of at least 256 bits (RFC 7518 §3.2), and a
        # short one set for development would otherwise be found working and carried forward.
        raise ConfigError(f"{ENV_PREFIX}JWT_SECRET: must be at least 32 characters")
    if settings.is_production:
        if settings.jwt_algorithm == "HS256" and settings.jwt_secret is None:
            raise ConfigError(f"{ENV_PREFIX}JWT_SECRET: required when FAVORITES_ENV=production")
        if settings.service_clients is None:
            raise ConfigError(
                f"{ENV_PREFIX}SERVICE_CLIENTS: required when FAVORITES_ENV=production"
            )
    return settings
