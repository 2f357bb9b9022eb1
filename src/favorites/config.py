"""The one list of settings. Every name here is part of the public contract (FAVORITES_*).

Values come from the environment, then a ``*_FILE`` variant there (a mounted Kubernetes secret or a
Vault agent file) for every secret, then ``.env``, then a ``*_FILE`` variant named in ``.env``: the
environment wins over ``.env``, and within each a plain variable over its ``*_FILE``. Unset means
the embedded default: SQLite under ``./var``, in-process cache and limiter, a signing secret
generated once (see ``embedded``). ``load_settings`` turns any bad value into one line naming the
variable, so start-up stops before anything is printed or started.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyNetwork,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
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

#: What a validated network setting holds (``IPvAnyNetwork`` validates it: either family, one
#: message for both).
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_RATE = re.compile(r"^\s*([1-9]\d*)\s*/\s*(second|minute|hour|day)\s*$")
_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)
#: HS256 secrets and the key that signs cursors and audit pseudonyms: 256 bits at least
#: (RFC 7518 §3.2), as the deployment example and the documentation ask.
MIN_SECRET_LENGTH = 32
#: RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used" with RS256.
MIN_RSA_BITS = 2048


class ServiceClient(BaseModel):
    """A machine caller (identity service, back office). Only the key's sha256 is configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    cidrs: tuple[IPvAnyNetwork, ...] = ()
    scopes: frozenset[Literal["tokens:issue", "users:erase", "products:write"]] = frozenset()

    @field_validator("key_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _SecretFileSource(EnvSettingsSource):
    """``FAVORITES_<NAME>_FILE`` for every secret, so secrets never sit in the environment.

    The named file's content (without surrounding whitespace: mounted secrets often end in a
    newline) is read exactly as ``FAVORITES_<NAME>`` would be: this is pydantic-settings' own
    environment source over those contents, so a JSON list of service clients or comma-separated
    replica URLs decode the same way from a file as from the variable. ``variables`` is where
    the ``*_FILE`` names are looked up: the environment, or the ``.env`` file's variables as
    pydantic-settings read them (one instance each, so the environment wins over ``.env``). A
    file is read only for a setting that no earlier source gave: one that is overridden is not
    used, so it cannot stop start-up either, as for plain variables.
    """

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str | None],
                 origin: str):
        self._variables = variables
        self._origin = origin
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {}  # read in __call__, once the earlier sources' values are known

    def __call__(self) -> dict[str, Any]:
        contents: dict[str, str | None] = {}
        for name in sorted(SECRET_FIELDS - self.current_state.keys()):
            variable = f"{ENV_PREFIX}{name.upper()}_FILE"
            path = self._variables.get(self._apply_case_sensitive(variable))
            if not path:
                continue
            try:
                contents[self._apply_case_sensitive(ENV_PREFIX + name)] = (
                    Path(path).read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"{variable}{self._origin}: cannot read {path!r}: {reason or exc}") from None
        self.env_vars = contents
        return super().__call__()


class _EmptyYieldsToFile(PydanticBaseSettingsSource):
    """An environment (or ``.env``) source in which a secret set to the empty string does not
    count when its ``*_FILE`` is set: empty means unset for every setting here, and
    ``FAVORITES_DATABASE_URL=`` left in a manifest must not hide the mounted
    ``FAVORITES_DATABASE_URL_FILE`` (outside production it would fall back to SQLite)."""

    def __init__(self, settings_cls: type[BaseSettings], inner: EnvSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self._inner()
        for name in SECRET_FIELDS:
            variable = self._inner._apply_case_sensitive(f"{ENV_PREFIX}{name.upper()}_FILE")
            if values.get(name) == "" and self._inner.env_vars.get(variable):
                del values[name]
        return values


def _read_key(path: Path, *, private: bool) -> Any:
    kind = "private" if private else "public"
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if private:
            return serialization.load_pem_private_key(pem, password=None)
        return serialization.load_pem_public_key(pem)
    except TypeError:  # a passphrase-protected private key
        raise ValueError(f"{str(path)!r} is encrypted; the service needs the key unencrypted"
                         ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{str(path)!r} is not a PEM {kind} key") from None


def _check_key_file(path: Path, algorithm: str, *, private: bool) -> None:
    """A signing or verification key that the algorithm cannot use stops start-up here, with the
    variable's name, instead of a traceback where the token codec is built (after the one-time
    local API key may have been printed). The file is read again when the codec is built."""
    key = _read_key(path, private=private)
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        held = f"an EC key on curve {key.curve.name}"
        fits = algorithm == "ES256" and key.curve.name == "secp256r1"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        held = f"an RSA key of {key.key_size} bits"
        fits = algorithm == "RS256" and key.key_size >= MIN_RSA_BITS
    else:
        held, fits = f"a {type(key).__name__.removeprefix('_')} key", False
    if not fits:
        needed = ("an EC key on curve P-256 (secp256r1)" if algorithm == "ES256"
                  else f"an RSA key of at least {MIN_RSA_BITS} bits")
        raise ValueError(f"{str(path)!r} holds {held}; {algorithm} needs {needed}")


def _check_port(port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")


def _check_database_url(url: str) -> None:
    """Parsed by SQLAlchemy, which reads it later: its parser takes what a generic URL parser
    refuses (a ``/`` in the password), and only reads the port when connecting (a traceback)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("is not a database URL (postgresql://user:pass@host:port/db)") from None
    except ValueError:  # int() of the port
        raise ValueError("the port must be a number from 1 to 65535") from None
    _check_port(parsed.port)


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
    #: Before the key files: their validators check the keys fit it.
    jwt_algorithm: Literal["HS256", "ES256", "RS256"] = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_public_key_files: Annotated[list[Path], NoDecode] = []
    jwt_issuer: str = Field("favorites-service", min_length=1)
    jwt_audience: str = Field("favorites", min_length=1)
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    access_token_ttl_seconds: int = Field(3600, ge=60, le=86_400)
    refresh_token_ttl_seconds: int = Field(2_592_000, ge=3600, le=31_536_000)
    #: Keys cursors and audit pseudonyms; derived from the signing secret when unset.
    secret_key: SecretStr | None = None

    #: JSON, decoded by ``_service_clients_json`` (NoDecode) so that malformed JSON is reported
    #: as such: pydantic-settings would pass it on as a string ("Input should be a valid list").
    service_clients: Annotated[list[ServiceClient] | None, NoDecode] = None
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = []
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
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, EnvSettingsSource)  # DotEnvSettingsSource
        return (
            init_settings,
            _EmptyYieldsToFile(settings_cls, env_settings),
            _SecretFileSource(settings_cls, env_settings.env_vars, ""),
            _EmptyYieldsToFile(settings_cls, dotenv_settings),
            _SecretFileSource(settings_cls, dotenv_settings.env_vars, " (in .env)"),
        )

    @field_validator(
        "database_replica_urls", "trusted_proxies", "cors_origins", "jwt_public_key_files",
        mode="before",
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("database_url", "redis_url", "product_service_url", "service_clients",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("service_clients", mode="before")
    @classmethod
    def _service_clients_json(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            try:
                return json.loads(value)  # as pydantic-settings decodes complex values
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON: {exc}") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> Any:
        """Any case, and ``WARN`` (the level the service's own log lines show) for WARNING."""
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @field_validator("jwt_secret", "secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # In every environment: HMAC keys want at least 256 bits (RFC 7518 §3.2), and a short
        # one set for development would otherwise be found working and carried forward.
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("jwt_private_key_file")
    @classmethod
    def _private_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        algorithm = info.data.get("jwt_algorithm")  # absent when it is itself invalid
        if value is not None and algorithm not in (None, "HS256"):
            _check_key_file(value, algorithm, private=True)
        return value

    @field_validator("jwt_public_key_files")
    @classmethod
    def _public_keys(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        algorithm = info.data.get("jwt_algorithm")
        if algorithm not in (None, "HS256"):
            for path in value:
                _check_key_file(path, algorithm, private=False)
        return value

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
        if value is not None:
            _check_database_url(value)
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _replica_scheme(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("postgresql:", "postgres:", "postgresql+asyncpg:")):
                raise ValueError("every replica must be a postgresql:// URL")
            _check_database_url(url)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        """The port is read as redis-py reads it (``urllib.parse``), here rather than on the
        first connection, which is inside a running worker."""
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// or rediss://")
        if value is not None and not value.startswith("unix://"):
            try:
                port = urlsplit(value).port
            except ValueError:
                raise ValueError("the port must be a number from 1 to 65535") from None
            _check_port(port)
        return value

    @field_validator("product_service_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("http://", "https://")):
                raise ValueError("must be an http:// or https:// URL")
            try:
                url = _HTTP_URL.validate_python(value)  # a host, a numeric port
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Input should be a valid URL, ")
                raise ValueError(f"must be an http:// or https:// URL: {reason}") from None
            _check_port(url.port)
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


def _describe(error: Any) -> str:
    """``FAVORITES_X: message``; for an item of a list, the item (or where it is in a secret's
    JSON, which is not repeated: ``[0].key_sha256``)."""
    field, *inner = error["loc"] or ("?",)
    message = error["msg"].removeprefix("Value error, ")
    if inner:
        if field not in SECRET_FIELDS and isinstance(error.get("input"), str):
            where = repr(error["input"])
        else:
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                            for part in inner).lstrip(".")
        message = f"{where}: {message}"
    return f"{ENV_PREFIX}{str(field).upper()}: {message}"


def _uses_data_dir(settings: Settings) -> bool:
    """Whether the embedded defaults (``embedded.resolve``) keep a file under the data directory:
    the SQLite database, the generated HS256 secret, the local service client."""
    return (settings.database_url is None or settings.service_clients is None
            or (settings.jwt_algorithm == "HS256" and settings.jwt_secret is None))


def _prepare_data_dir(path: Path) -> None:
    """Created here, where a failure can name the variable; the embedded defaults would create
    it a moment later anyway (and SQLite does not create a missing directory)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{ENV_PREFIX}DATA_DIR: {str(path)!r} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}DATA_DIR: cannot create {str(path)!r}: {exc.strerror or exc}"
        ) from None


def load_settings(**overrides: Any) -> Settings:
    """Build Settings or raise ConfigError with one line that names the offending variable.

    Also creates the data directory when the embedded defaults will use it (see
    ``_prepare_data_dir``).
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
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
    if settings.redis_cluster and settings.redis_url is None:
        raise ConfigError(f"{ENV_PREFIX}REDIS_CLUSTER: needs FAVORITES_REDIS_URL (redis://host:port "
                          "of one cluster node)")
    if settings.redis_cluster and (settings.redis_url or "").startswith("unix://"):
        raise ConfigError(f"{ENV_PREFIX}REDIS_CLUSTER: a cluster needs redis:// or rediss:// hosts")
    if settings.jwt_algorithm == "HS256" and settings.jwt_private_key_file is not None:
        # Otherwise the key would be ignored and tokens signed with a secret: not what was meant.
        raise ConfigError(
            f"{ENV_PREFIX}JWT_PRIVATE_KEY_FILE: set, but FAVORITES_JWT_ALGORITHM is HS256; set "
            "FAVORITES_JWT_ALGORITHM=ES256 or RS256 to sign with the key"
        )
    if settings.jwt_algorithm != "HS256" and settings.jwt_private_key_file is None:
        raise ConfigError(
            f"{ENV_PREFIX}JWT_PRIVATE_KEY_FILE: required when FAVORITES_JWT_ALGORITHM="
            f"{settings.jwt_algorithm}"
        )
    if settings.is_production:
        if settings.jwt_algorithm == "HS256" and settings.jwt_secret is None:
            raise ConfigError(f"{ENV_PREFIX}JWT_SECRET: required when FAVORITES_ENV=production")
        if settings.service_clients is None:
            raise ConfigError(
                f"{ENV_PREFIX}SERVICE_CLIENTS: required when FAVORITES_ENV=production"
            )
        # The embedded SQLite file is per instance: every replica of the service would keep
        # its own favorites. Production names the database it shares.
        if settings.database_url is None:
            raise ConfigError(f"{ENV_PREFIX}DATABASE_URL: required when FAVORITES_ENV=production")
    if _uses_data_dir(settings):
        _prepare_data_dir(settings.data_dir)
    return settings


#: Variables with the prefix that are not settings but are read elsewhere: the smoke command's
#: key, and the test suite's own.
_NOT_SETTINGS = ("FAVORITES_SMOKE_API_KEY",)
_NOT_SETTINGS_PREFIXES = ("FAVORITES_TEST_",)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``FAVORITES_*`` variables that are not settings, each with the likeliest one meant: a
    misspelt name is otherwise ignored without a word, and its setting silently at its default
    (``FAVORITES_DATABSE_URL`` would serve the embedded SQLite file)."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    known |= {f"{ENV_PREFIX}{name.upper()}_FILE" for name in SECRET_FIELDS}
    found = []
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or name in known or name in _NOT_SETTINGS
                or name.startswith(_NOT_SETTINGS_PREFIXES)):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        found.append(f"{name} is not a setting and is ignored"
                     + (f" (did you mean {close[0]}?)" if close else ""))
    return found
