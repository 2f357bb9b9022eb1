"""Settings that would make the service insecure are refused at start-up, in every environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from favorites.config import ConfigError, load_settings

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


pytestmark = pytest.mark.usefixtures("environment")


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_a_jwt_secret_shorter_than_32_characters_is_refused(env: str) -> None:
    with pytest.raises(ConfigError, match="FAVORITES_JWT_SECRET: must be at least 32 characters"):
        load_settings(_env_file=None, env=env, jwt_secret="s" * 31)


def test_a_jwt_secret_of_32_characters_is_accepted() -> None:
    assert load_settings(_env_file=None, env="development",
                         jwt_secret="s" * 32).jwt_secret is not None


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_a_secret_key_shorter_than_32_characters_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: str,
) -> None:
    """It keys the cursor MACs and audit pseudonyms: the 32 characters the deployment example
    and the documentation ask for are enforced, as for the HS256 secret."""
    monkeypatch.setenv("FAVORITES_ENV", env)
    monkeypatch.setenv("FAVORITES_SECRET_KEY", "short")
    with pytest.raises(ConfigError, match=r"^FAVORITES_SECRET_KEY: must be at least 32 characters$"):
        load_settings()
    monkeypatch.setenv("FAVORITES_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("FAVORITES_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS", "[]")
    monkeypatch.setenv("FAVORITES_DATABASE_URL", "postgresql://u@db/favorites")
    settings = load_settings()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "k" * 32


@pytest.mark.parametrize("variable", ["FAVORITES_JWT_ISSUER", "FAVORITES_JWT_AUDIENCE"])
def test_an_empty_token_issuer_or_audience_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str,
) -> None:
    """Tokens would be minted and accepted with ``"iss": ""`` (or ``aud``)."""
    monkeypatch.setenv(variable, "")
    with pytest.raises(ConfigError, match=rf"^{variable}: "):
        load_settings()


def test_production_names_its_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded SQLite file is per instance: each replica of the service would keep its own
    favorites."""
    monkeypatch.setenv("FAVORITES_ENV", "production")
    monkeypatch.setenv("FAVORITES_JWT_SECRET", "s" * 40)
    monkeypatch.setenv("FAVORITES_SERVICE_CLIENTS", "[]")
    with pytest.raises(ConfigError, match=r"^FAVORITES_DATABASE_URL: required when "
                                          r"FAVORITES_ENV=production$"):
        load_settings()
    monkeypatch.setenv("FAVORITES_DATABASE_URL", "postgresql://u@db/favorites")
    assert load_settings().is_production


def _pem(key: PrivateKey, *, public: bool = False, password: bytes | None = None) -> bytes:
    if public:
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa2048": rsa.generate_private_key(65537, 2048),
        "rsa1024": rsa.generate_private_key(65537, 1024),  # noqa: S505 (must be refused)
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


#: Per algorithm: the key that fits it, and the ones that do not with what the message says.
UNFIT: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "ES256": ("p256", [("rsa2048", "holds an RSA key of 2048 bits; ES256 needs an EC key on "
                                   "curve P-256"),
                       ("p384", "holds an EC key on curve secp384r1; ES256 needs"),
                       ("ed25519", "ES256 needs")]),
    "RS256": ("rsa2048", [("p256", "holds an EC key on curve secp256r1; RS256 needs an RSA key"),
                          ("rsa1024", "holds an RSA key of 1024 bits; RS256 needs an RSA key of "
                                      "at least 2048 bits")]),
}


@pytest.mark.parametrize("algorithm", sorted(UNFIT))
@pytest.mark.parametrize("which", ["FAVORITES_JWT_PRIVATE_KEY_FILE",
                                   "FAVORITES_JWT_PUBLIC_KEY_FILES"])
def test_a_key_file_the_algorithm_cannot_use_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: Path, keys: dict[str, PrivateKey],
    algorithm: str, which: str,
) -> None:
    """Missing, not PEM, encrypted, of another type, curve or a short RSA key: refused when the
    settings are loaded (before the one-time local API key is created and printed), not a
    traceback where the token codec is built."""
    fitting, unfit = UNFIT[algorithm]
    public = which.endswith("PUBLIC_KEY_FILES")
    good = environment / "good.pem"
    good.write_bytes(_pem(keys[fitting]))
    monkeypatch.setenv("FAVORITES_JWT_ALGORITHM", algorithm)
    monkeypatch.setenv("FAVORITES_JWT_PRIVATE_KEY_FILE", str(good))

    def refused(path: Path, said: str) -> None:
        monkeypatch.setenv(which, str(path))
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert str(raised.value).startswith(f"{which}: "), raised.value
        assert said in str(raised.value)
        assert "\n" not in str(raised.value)

    def write(name: str, data: bytes) -> Path:
        (environment / name).write_bytes(data)
        return environment / name

    refused(environment / "missing.pem", "cannot read")
    refused(write("garbage.pem", b"-----BEGIN PRIVATE KEY-----\nnot a key\n"),
            f"is not a PEM {'public' if public else 'private'} key")
    if not public:
        refused(write("encrypted.pem", _pem(keys[fitting], password=b"secret")), "encrypted")
    for name, said in unfit:
        refused(write(f"{name}.pem", _pem(keys[name], public=public)), said)
    monkeypatch.setenv(which, str(write("fits.pem", _pem(keys[fitting], public=public))))
    assert load_settings().jwt_algorithm == algorithm


def test_a_key_file_with_hs256_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A deployment that sets the key file but forgets the algorithm would sign with a generated
    secret instead of its key, and every other service would reject the tokens."""
    monkeypatch.setenv("FAVORITES_JWT_PRIVATE_KEY_FILE", str(tmp_path / "key.pem"))
    with pytest.raises(ConfigError, match=r"^FAVORITES_JWT_PRIVATE_KEY_FILE: set, but "
                                          r"FAVORITES_JWT_ALGORITHM is HS256"):
        load_settings()
