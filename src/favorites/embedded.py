"""Secrets and files of the embedded default, generated once under the data directory.

Only used where the operator configured nothing: a laptop, a demo, the test suite. Production
(``FAVORITES_ENV=production``) refuses to start without explicit secrets instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from favorites.config import ServiceClient, Settings


@dataclass(frozen=True, slots=True)
class EmbeddedDefaults:
    database_url: str
    jwt_secret: bytes | None
    service_clients: tuple[ServiceClient, ...]
    #: The local client's key, only on the start that created it (printed once, never stored).
    new_local_key: str | None = None


def _create_exclusive(path: Path, content: str) -> bool:
    """Write ``content`` unless the file exists; safe when several workers start at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return True


def resolve(settings: Settings, *, create_local_client: bool = True) -> EmbeddedDefaults:
    """``create_local_client``: False for the commands that never serve. The local client's key
    is shown once, by ``serve`` on the start that created it; a command run before the first
    start must not create it unseen (the key would be lost), and needs no service client."""
    data = settings.data_dir
    database_url = settings.database_url or f"sqlite:///{(data / 'favorites.db').as_posix()}"

    jwt_secret: bytes | None = None
    if settings.jwt_secret is not None:
        jwt_secret = settings.jwt_secret.get_secret_value().encode()
    elif settings.jwt_algorithm == "HS256":
        path = data / "jwt-secret"
        _create_exclusive(path, secrets.token_urlsafe(48))
        jwt_secret = path.read_text(encoding="utf-8").strip().encode()

    new_key: str | None = None
    if settings.service_clients is not None:
        clients = tuple(settings.service_clients)
    elif not create_local_client and not (data / "local-client.json").exists():
        clients = ()
    else:
        path = data / "local-client.json"
        key = "fav_" + secrets.token_urlsafe(32)
        client = {
            "name": "local",
            "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
            "cidrs": ["127.0.0.0/8", "::1/128"],
            "scopes": ["tokens:issue", "users:erase", "products:write"],
        }
        if _create_exclusive(path, json.dumps(client)):
            new_key = key
        clients = (ServiceClient.model_validate_json(path.read_text(encoding="utf-8")),)
    return EmbeddedDefaults(database_url, jwt_secret, clients, new_key)


def derive_key(root: bytes, label: str) -> bytes:
    """Separate keys per purpose from one root secret (cursor MACs, audit pseudonyms)."""
    return hashlib.sha256(b"favorites:" + label.encode() + b":" + root).digest()
