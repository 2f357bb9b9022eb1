"""Access tokens as JWTs (PyJWT): HS256 with a secret, or ES256/RS256 with key files and ``kid``.

Verification pins the one configured algorithm (no ``none``, no HS/RS confusion), requires every
claim we rely on, and checks ``typ`` so a token minted for another purpose is not an access token.
HS256 tokens are verified by ``hs256`` (the same rules at a fraction of PyJWT's cost per new
token; see there), ES256 and RS256 by PyJWT.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from favorites.adapters.tokens.hs256 import (
    REQUIRED_CLAIMS,
    Hs256Verifier,
    decode_segment,
    json_object,
)
from favorites.domain.errors import InvalidToken
from favorites.domain.models import Principal, PrincipalKind

_REQUIRED = list(REQUIRED_CLAIMS)
_ROLES = frozenset({"user", "admin"})

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Verified tokens remembered per process (a few MB at most).
_VERIFIED_CACHE_SIZE = 20_000

#: What the cache keeps of a verified token: subject, roles, token id, expiry. Strings, integers
#: and tuples of them only, which the garbage collector stops tracking: 20,000 Principals (each
#: with a UUID and a frozenset) were 60,000 objects that every full collection walked, 30 ms
#: pauses every few seconds under load. A Principal is built from it (about 2 µs) when the token
#: is not among the recent ones below.
_Verified = tuple[str, tuple[str, ...], str, int]
#: The Principals of the most recently verified or used tokens, ready to hand out: the few
#: thousand objects the collector walks for them are worth a UUID and a Principal less to build
#: on each request of an active session.
_RECENT_PRINCIPALS = 1024


def _thumbprint(public_key: PublicKey, algorithm: str) -> str:
    """RFC 7638 JWK thumbprint, so a key's ``kid`` is stable wherever it is loaded."""
    jwk = _jwk(public_key, algorithm)
    members = {k: jwk[k] for k in sorted(jwk) if k in ("crv", "e", "kty", "n", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return jwt.utils.base64url_encode(digest).decode()


def unverified_header(token: str) -> dict[str, Any]:
    """The token's header, to pick the key it names; nothing in it is trusted yet.

    Only the first segment is decoded: PyJWT's ``get_unverified_header`` decodes all three (a
    quarter of a verification's CPU, paid for every token not seen recently). The signature,
    the algorithm allow-list and every claim are then checked by PyJWT itself.
    """
    return json_object(decode_segment(token.split(".", 1)[0]))


def _jwk(public_key: PublicKey, algorithm: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(algorithm)
    return dict(json.loads(algo.to_jwk(public_key)))


class JwtCodec:
    def __init__(
        self,
        *,
        algorithm: str,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        leeway_seconds: int,
        secret: bytes | None = None,
        private_key_pem: bytes | None = None,
        extra_public_key_pems: tuple[bytes, ...] = (),
    ):
        self.algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds
        self._leeway = leeway_seconds
        self._verify_keys: dict[str, Any] = {}
        self._verified: dict[str, _Verified] = {}
        self._role_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._recent: dict[str, Principal] = {}
        self._public: list[tuple[str, PublicKey]] = []
        self._hs256: Hs256Verifier | None = None
        if algorithm == "HS256":
            if not secret:
                raise ValueError("HS256 needs a secret")
            self._signing_key: Any = secret
            self._kid = "hs-" + hashlib.sha256(secret).hexdigest()[:12]
            self._verify_keys[self._kid] = secret
            self._hs256 = Hs256Verifier(self._verify_keys, issuer=issuer, audience=audience,
                                        leeway=leeway_seconds)
        else:
            if private_key_pem is None:
                raise ValueError(f"{algorithm} needs a private key")
            private = serialization.load_pem_private_key(private_key_pem, password=None)
            expected = ec.EllipticCurvePrivateKey if algorithm == "ES256" else rsa.RSAPrivateKey
            if not isinstance(private, expected):
                raise ValueError(f"the private key does not fit {algorithm}")
            self._signing_key = private
            public = private.public_key()
            self._kid = _thumbprint(public, algorithm)
            self._public.append((self._kid, public))
            for pem in extra_public_key_pems:
                key = serialization.load_pem_public_key(pem)
                if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                    raise ValueError("unsupported public key type")
                self._public.append((_thumbprint(key, algorithm), key))
            self._verify_keys.update(self._public)

    @classmethod
    def from_files(cls, private_key_file: Path, public_key_files: list[Path], **kw: Any) -> JwtCodec:
        return cls(
            private_key_pem=private_key_file.read_bytes(),
            extra_public_key_pems=tuple(p.read_bytes() for p in public_key_files),
            **kw,
        )

    def mint(self, user_id: UUID, roles: tuple[str, ...],
             token_id: str | None = None) -> tuple[str, int]:
        """``token_id``: the ``jti``, when the caller records it (to revoke it later)."""
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "roles": list(roles),
            "iat": now,
            "exp": now + self._ttl,
            "jti": token_id or uuid4().hex,
            "typ": "access",
        }
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithm,
                           headers={"kid": self._kid})
        return token, self._ttl

    def verify(self, token: str) -> Principal:
        """Verify a token; a token already verified is answered from memory until it expires.

        Signature and claims of a given token string never change, so re-verifying it on every
        request of a session is wasted work (about a fifth of a cached read's CPU). Expiry is
        still checked on each use; revocation is checked by the caller on each use.
        """
        recent = self._recent.get(token)
        if recent is not None:
            assert recent.token_expires_at is not None
            if time.time() - self._leeway < recent.token_expires_at:
                return recent
            del self._recent[token]
        cached = self._verified.get(token)
        if cached is not None:
            subject, roles, token_id, expires_at = cached
            if time.time() - self._leeway >= expires_at:
                del self._verified[token]
                raise InvalidToken("token expired")
            return self._remember(token, self._principal(subject, roles, token_id, expires_at))
        subject, roles, token_id, expires_at = self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()  # cheap bound; a burst of new sessions just re-verifies
        self._verified[token] = (subject, roles, token_id, expires_at)
        return self._remember(token, self._principal(subject, roles, token_id, expires_at))

    def _remember(self, token: str, principal: Principal) -> Principal:
        if len(self._recent) >= _RECENT_PRINCIPALS:
            self._recent.clear()
        self._recent[token] = principal
        return principal

    def _principal(self, subject: str, roles: tuple[str, ...], token_id: str,
                   expires_at: int) -> Principal:
        role_set = self._role_sets.get(roles)
        if role_set is None:  # a handful of combinations: one frozenset each
            role_set = self._role_sets[roles] = frozenset(roles)
        return Principal(kind=PrincipalKind.USER, subject=subject, user_id=UUID(subject),
                         roles=role_set, token_id=token_id, token_expires_at=expires_at)

    def _verify(self, token: str) -> _Verified:
        claims = self._hs256.verify(token) if self._hs256 is not None else self._decode(token)
        if claims.get("typ") != "access":
            raise InvalidToken("not an access token")
        roles = claims.get("roles")
        # Required and never empty: a token that names no role is not a user's by default.
        if not (isinstance(roles, list) and roles
                and all(isinstance(role, str) and role in _ROLES for role in roles)):
            raise InvalidToken("token roles not accepted")
        try:
            user_id = UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError):
            raise InvalidToken("token subject is not a user id") from None
        return str(user_id), tuple(sorted(set(roles))), str(claims["jti"]), int(claims["exp"])

    def _decode(self, token: str) -> dict[str, Any]:
        """ES256 and RS256: PyJWT, with the key the header names."""
        header = unverified_header(token)
        if header.get("alg") != self.algorithm:
            raise InvalidToken("token algorithm not accepted")
        key = self._verify_keys.get(str(header.get("kid", "")))
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.PyJWTError:
            raise InvalidToken("token rejected") from None
        if int(claims["iat"]) > time.time() + self._leeway:  # PyJWT also takes "123"
            raise InvalidToken("token issued in the future")
        return dict(claims)

    def jwks(self) -> dict[str, Any]:
        """Public keys for ``/.well-known/jwks.json``; empty for HS256 (a secret is never shown)."""
        keys = []
        for kid, public in self._public:
            jwk = _jwk(public, self.algorithm)
            jwk.update({"kid": kid, "alg": self.algorithm, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}
