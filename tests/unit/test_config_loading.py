"""How settings are read (SPEC §7): ``*_FILE`` variants from the environment and from ``.env``,
JSON and lists, URLs, networks and names, each bad value one ``ConfigError`` naming the variable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from favorites.config import SECRET_FIELDS, ConfigError, Settings, load_settings

CLIENTS = [{"name": "identity", "key_sha256": hashlib.sha256(b"key").hexdigest(),
            "cidrs": ["10.0.0.0/8", "fd00::/8"], "scopes": ["tokens:issue"]}]

#: A value for every secret, as it would sit in a mounted file (with its trailing newline).
SECRET_VALUES = {
    "database_url": "postgresql://favorites:p%40ss@db.internal:5432/favorites",
    "database_replica_urls": "postgresql://r@replica-1:5432/favorites, postgresql://r@replica-2/favorites",
    "redis_url": "redis://:password@redis.internal:6379/0",
    "jwt_secret": "j" * 40,
    "service_clients": json.dumps(CLIENTS),
    "secret_key": "k" * 40,
}


pytestmark = pytest.mark.usefixtures("environment")


def _file(path: Path, content: str) -> str:
    path.write_text(content + "\n", encoding="utf-8")
    return str(path)


def _with_database(name: str) -> dict[str, str]:
    """Replicas need a PostgreSQL primary."""
    return {"FAVORITES_DATABASE_URL": SECRET_VALUES["database_url"]} \
        if name == "database_replica_urls" else {}


def test_every_secret_file_variant_reads_as_its_variable(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    """A JSON list (service clients) and a comma-separated list (replicas) included: the file's
    content is decoded as the variable's would be."""
    assert set(SECRET_VALUES) == SECRET_FIELDS
    for name, value in SECRET_VALUES.items():
        variable = f"FAVORITES_{name.upper()}"
        with monkeypatch.context() as env:
            for extra, extra_value in _with_database(name).items():
                env.setenv(extra, extra_value)
            env.setenv(variable, value)
            from_variable = getattr(load_settings(), name)
            env.delenv(variable)
            env.setenv(f"{variable}_FILE", _file(environment / name, value))
            from_file = getattr(load_settings(), name)
        assert from_file == from_variable, name
        assert from_file not in (None, []), name


def test_service_clients_file_as_the_deployment_mounts_it(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS_FILE",
                       _file(environment / "service_clients", json.dumps(CLIENTS)))
    clients = load_settings().service_clients
    assert clients is not None
    assert [(c.name, [str(n) for n in c.cidrs]) for c in clients] == [
        ("identity", ["10.0.0.0/8", "fd00::/8"])]


def test_secret_file_variants_named_in_dotenv_are_read(environment: Path) -> None:
    (environment / ".env").write_text(
        f"FAVORITES_JWT_SECRET_FILE={_file(environment / 'jwt', 'j' * 40)}\n"
        f"FAVORITES_SERVICE_CLIENTS_FILE={_file(environment / 'clients', json.dumps(CLIENTS))}\n",
        encoding="utf-8")
    settings = load_settings()
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "j" * 40
    assert settings.service_clients is not None
    assert [c.name for c in settings.service_clients] == ["identity"]


def test_a_secret_file_in_dotenv_that_cannot_be_read_stops_start_up(environment: Path) -> None:
    (environment / ".env").write_text("FAVORITES_JWT_SECRET_FILE=/nonexistent/jwt\n")
    with pytest.raises(ConfigError, match=r"^FAVORITES_JWT_SECRET_FILE \(in \.env\): cannot read "
                                          r"'/nonexistent/jwt': No such file or directory$"):
        load_settings()


def test_secret_files_follow_the_precedence_of_plain_variables(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    """The environment wins over ``.env``; within each, the plain variable over its ``*_FILE``.
    A file that is overridden is not read (a missing one does not stop start-up)."""
    (environment / ".env").write_text(
        f"FAVORITES_JWT_SECRET={'c' * 40}\n"
        f"FAVORITES_SECRET_KEY_FILE={_file(environment / 'secret_key', 'a' * 40)}\n"
        "FAVORITES_REDIS_URL=redis://plain:6379/0\n"
        f"FAVORITES_REDIS_URL_FILE={_file(environment / 'redis', 'redis://file:6379/0')}\n"
        "FAVORITES_DATABASE_URL_FILE=/nonexistent/database_url\n",
        encoding="utf-8")
    monkeypatch.setenv("FAVORITES_JWT_SECRET_FILE", _file(environment / "jwt", "b" * 40))
    monkeypatch.setenv("FAVORITES_DATABASE_URL", "postgresql://u@environment/db")
    settings = load_settings()
    assert settings.jwt_secret is not None
    assert settings.secret_key is not None
    assert settings.jwt_secret.get_secret_value() == "b" * 40  # environment's file over .env
    assert settings.secret_key.get_secret_value() == "a" * 40  # from .env's file
    assert settings.redis_url == "redis://plain:6379/0"
    assert settings.database_url == "postgresql://u@environment/db"


def test_an_empty_variable_does_not_hide_its_file(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    """Empty means unset for every setting: ``FAVORITES_DATABASE_URL=`` left in a manifest must
    not silently fall back to SQLite past the mounted ``FAVORITES_DATABASE_URL_FILE``."""
    monkeypatch.setenv("FAVORITES_DATABASE_URL", "")
    monkeypatch.setenv("FAVORITES_DATABASE_URL_FILE",
                       _file(environment / "database_url", "postgresql://u@from-file/db"))
    assert load_settings().database_url == "postgresql://u@from-file/db"


@pytest.mark.parametrize(("value", "column"), [('[{"name":"a",', 14), ("notjson", 1)])
def test_malformed_service_clients_json_says_where(
    monkeypatch: pytest.MonkeyPatch, environment: Path, value: str, column: int,
) -> None:
    pattern = rf"^FAVORITES_SERVICE_CLIENTS: invalid JSON: .*line 1 column {column}\b"
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS", value)
    with pytest.raises(ConfigError, match=pattern):
        load_settings()
    monkeypatch.delenv("FAVORITES_SERVICE_CLIENTS")
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS_FILE", _file(environment / "clients", value))
    with pytest.raises(ConfigError, match=pattern):
        load_settings()


def test_a_service_client_error_says_where_in_the_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS", json.dumps(
        [CLIENTS[0], {**CLIENTS[0], "cidrs": ["::1/129"]}]))
    with pytest.raises(ConfigError, match=r"^FAVORITES_SERVICE_CLIENTS: \[1\]\.cidrs\[0\]: value "
                                          r"is not a valid IPv4 or IPv6 network$"):
        load_settings()


@pytest.mark.parametrize("value", ["::1/129", "10.0.0.0/33", "fd00::/8,nonsense"])
def test_a_bad_trusted_proxy_network_is_reported_for_either_family(
    monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    monkeypatch.setenv("FAVORITES_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigError, match=r"^FAVORITES_TRUSTED_PROXIES: '[^']+': value is not a "
                                          r"valid IPv4 or IPv6 network$"):
        load_settings()


@pytest.mark.parametrize(("env", "variable"), [
    ({"FAVORITES_DATABASE_URL": "postgresql://a:b@host:{port}/db"}, "FAVORITES_DATABASE_URL"),
    ({"FAVORITES_DATABASE_URL": "postgresql://u@primary/db",
      "FAVORITES_DATABASE_REPLICA_URLS": "postgresql://u@r1/db,postgresql://u@r2:{port}/db"},
     "FAVORITES_DATABASE_REPLICA_URLS"),
    ({"FAVORITES_REDIS_URL": "redis://127.0.0.1:{port}/0"}, "FAVORITES_REDIS_URL"),
    ({"FAVORITES_PRODUCT_SERVICE_URL": "http://catalog:{port}"}, "FAVORITES_PRODUCT_SERVICE_URL"),
])
@pytest.mark.parametrize("port", ["notaport", "0", "65536", "-1"])
def test_a_url_with_a_port_outside_1_to_65535_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, port: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(port=port))
    with pytest.raises(ConfigError, match=rf"^{variable}: .*port"):
        load_settings()


def test_urls_with_ports_in_range_and_passwords_the_driver_reads_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ports are checked with the parser that reads each URL later: SQLAlchemy takes a ``/`` in
    a password, a generic URL parser would not."""
    monkeypatch.setenv("FAVORITES_DATABASE_URL", "postgresql://u:pa/ss@db:65535/favorites")
    monkeypatch.setenv("FAVORITES_REDIS_URL", "rediss://:secret@redis:1/0")
    monkeypatch.setenv("FAVORITES_PRODUCT_SERVICE_URL", "https://catalog:8443/api/")
    settings = load_settings()
    assert settings.product_service_url == "https://catalog:8443/api"
    monkeypatch.setenv("FAVORITES_PRODUCT_SERVICE_URL", "http://")
    with pytest.raises(ConfigError, match=r"^FAVORITES_PRODUCT_SERVICE_URL: .*empty host"):
        load_settings()


@pytest.mark.parametrize(("value", "level"), [
    ("WARN", "WARNING"), ("warn", "WARNING"), ("info", "INFO"), ("Warning", "WARNING"),
    (" debug ", "DEBUG"), ("error", "ERROR"),
])
def test_log_level_in_any_case_and_warn(monkeypatch: pytest.MonkeyPatch, value: str,
                                        level: str) -> None:
    monkeypatch.setenv("FAVORITES_LOG_LEVEL", value)
    assert load_settings().log_level == level


def test_redis_cluster_needs_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAVORITES_REDIS_CLUSTER", "true")
    with pytest.raises(ConfigError, match=r"^FAVORITES_REDIS_CLUSTER: needs FAVORITES_REDIS_URL"):
        load_settings()


def test_an_unusable_data_dir_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    monkeypatch.setenv("FAVORITES_DATA_DIR", "/proc/nope")
    with pytest.raises(ConfigError, match=r"^FAVORITES_DATA_DIR: cannot create '/proc/nope': "):
        load_settings()
    monkeypatch.setenv("FAVORITES_DATA_DIR", _file(environment / "a-file", "x"))
    with pytest.raises(ConfigError, match=r"^FAVORITES_DATA_DIR: .* is not a directory$"):
        load_settings()


def test_the_data_dir_is_ready_for_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch, environment: Path,
) -> None:
    """With the secrets given but no database, the embedded SQLite file still goes under the
    data directory, which SQLite does not create."""
    monkeypatch.setenv("FAVORITES_DATA_DIR", str(environment / "data" / "dir"))
    monkeypatch.setenv("FAVORITES_JWT_SECRET", "j" * 40)
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS", json.dumps(CLIENTS))
    load_settings()
    assert (environment / "data" / "dir").is_dir()


def test_settings_built_directly_validate_the_same(environment: Path) -> None:
    """Tests and ``create_app(settings)`` build Settings without load_settings: same checks."""
    with pytest.raises(ValueError, match="invalid JSON"):
        Settings(_env_file=None, service_clients="notjson")  # type: ignore[call-arg,arg-type]
