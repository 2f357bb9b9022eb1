"""Fixtures for the security suite: an ES256-signing app with a rotated key, CORS configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from favorites.entrypoints.http.app import create_app
from tests.conftest import make_settings, started


@dataclass
class KeyPair:
    private: ec.EllipticCurvePrivateKey
    private_pem: bytes
    public_pem: bytes


def new_key() -> KeyPair:
    private = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(
        private,
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        private.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo),
    )


@dataclass
class Es256App:
    client: httpx.AsyncClient
    current: KeyPair
    previous: KeyPair


@pytest.fixture
async def es256(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Es256App]:
    tmp: Path = tmp_path_factory.mktemp("es256")
    current, previous = new_key(), new_key()
    (tmp / "current.pem").write_bytes(current.private_pem)
    (tmp / "previous.pub.pem").write_bytes(previous.public_pem)
    settings = make_settings(
        sqlite_url, tmp, jwt_algorithm="ES256", jwt_secret=None,
        jwt_private_key_file=tmp / "current.pem",
        jwt_public_key_files=[tmp / "previous.pub.pem"],
        secret_key="cursor-and-audit-key-" + "z" * 20,
        cors_origins=["https://shop.example"],
    )
    async for client in started(create_app(settings)):
        yield Es256App(client, current, previous)
