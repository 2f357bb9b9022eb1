"""HS256 access tokens verified without PyJWT's generic machinery, for the one path where it costs.

Every request that brings a token the process has not seen before pays for a verification. In
the service, measured with ``bench.inproc`` on first pages read from the database, PyJWT's
``decode`` of such a token took about 145 µs of a 620 µs request: its generic key preparation,
a Python-level check of every character of every segment, ``json`` twice, and claim validation
written for every algorithm and option. The checks below are the same rules, for the one
algorithm and the one set of options the codec uses, with a compiled pattern, one HMAC prepared
at start-up and orjson: about a fifth of that.

PyJWT still mints every token and verifies ES256 and RS256. What this module accepts, PyJWT
accepts too: ``tests/unit/adapters/test_hs256.py`` runs both on valid tokens and on thousands of
mutations of them. Where the two differ, this one is stricter: no ``=`` padding, no ``crit`` or
``b64`` header, numeric dates must be integers (PyJWT also takes ``"123"``, ``1.5`` and ``true``),
no JSON beyond what orjson reads (no ``NaN``, no integers of more than 64 bits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Any

import orjson

from favorites.domain.errors import InvalidToken

#: Far above any token the service mints (about 400 bytes): a bound on the work done before
#: the signature is known to be good.
MAX_TOKEN_LENGTH = 8192

#: Claims every access token carries (and that may not be null).
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "typ")

#: Three base64url segments without padding (the signature may be empty: "alg": "none" is then
#: refused for its algorithm); a segment of length 1 (mod 4) encodes nothing.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
#: base64url's characters and their values; the spare low bits of a segment's last character by
#: its length modulo 4 (None: no such length).
_VALUES = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_SPARE_BITS = (0, None, 0b1111, 0b11)
#: Header segments remembered (a deployment has one per signing key).
_KNOWN_HEADERS = 16


def decode_segment(text: str) -> bytes:
    """Decode one segment, canonical form only: two spellings of one signature would be two
    different tokens (and two entries of the codec's memory) for the same credential. A
    segment of ``4k + 2`` or ``4k + 3`` characters has 4 or 2 bits to spare in its last one,
    which must be zero (PyJWT refuses them otherwise, too); ``4k + 1`` encodes nothing."""
    spare = _SPARE_BITS[len(text) % 4]
    if spare is None or (spare and _VALUES.get(text[-1], 1) & spare) \
            or _SEGMENT.fullmatch(text) is None:
        raise InvalidToken("malformed token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None


def _encode(digest: bytes) -> bytes:
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


def _integer(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if type(value) is not int:  # bool is an int subclass: "exp": true is not a date
        raise InvalidToken("token rejected")
    return value


class Hs256Verifier:
    """Checks an HS256 compact JWT against a set of keys by ``kid`` and the codec's claim rules.

    ``verify`` returns the claims of a token whose header names ``HS256`` and a known ``kid``,
    whose signature is that key's HMAC-SHA256 of the first two segments, whose payload holds
    every claim in ``REQUIRED_CLAIMS`` (none of them null), whose ``iss`` is ``issuer``, whose ``aud``
    is or contains ``audience``, which has not expired (``exp``) and which is not dated in the
    future (``iat``, ``nbf``), each within ``leeway`` seconds. Anything else raises
    ``InvalidToken`` with the reason the codec has always given.
    """

    def __init__(self, keys: dict[str, bytes], *, issuer: str, audience: str, leeway: int):
        # One keyed HMAC per kid, copied per token: the key's padding and first block are
        # hashed once here instead of on every verification.
        self._macs = {kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in keys.items()}
        #: Header segment -> its key's HMAC, for headers that signed a good token: every token of
        #: a key carries the same header, so its decoding and checks are done once. Filled only
        #: after a signature checked out (a header is read before its signature is known, and
        #: anyone can write one), and bounded all the same.
        self._headers: dict[str, hmac.HMAC] = {}
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    def verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        match = _COMPACT.fullmatch(token)
        if match is None:
            raise InvalidToken("malformed token")
        header_text, payload_text, signature_text = match.groups()
        keyed = self._headers.get(header_text)
        known = keyed is not None
        if keyed is None:
            keyed = self._mac_for(header_text)
        mac = keyed.copy()
        mac.update(token[:match.end(2)].encode("ascii"))
        # Compared in its encoded form: only the canonical spelling of the right signature
        # matches, without decoding the one presented (see decode_segment for why canonical).
        if not hmac.compare_digest(_encode(mac.digest()), signature_text.encode("ascii")):
            decode_segment(signature_text)  # "malformed" when it is not a signature at all
            raise InvalidToken("token rejected")
        if not known and len(self._headers) < _KNOWN_HEADERS:
            self._headers[header_text] = keyed
        claims = json_object(decode_segment(payload_text))
        self._check(claims)
        return claims

    def _mac_for(self, header_text: str) -> hmac.HMAC:
        """The HMAC of the key a header names, once the header is found acceptable."""
        header = json_object(decode_segment(header_text))
        if header.get("alg") != "HS256":
            raise InvalidToken("token algorithm not accepted")
        if "crit" in header or "b64" in header:  # extensions we do not implement
            raise InvalidToken("token rejected")
        kid = header.get("kid")
        mac = self._macs.get(kid) if isinstance(kid, str) else None
        if mac is None:
            raise InvalidToken("unknown signing key")
        return mac

    def _check(self, claims: dict[str, Any]) -> None:
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise InvalidToken("token rejected")
        now = time.time()
        if _integer(claims, "exp") <= now - self._leeway:
            raise InvalidToken("token expired")
        if _integer(claims, "iat") > now + self._leeway:
            raise InvalidToken("token issued in the future")
        if "nbf" in claims and _integer(claims, "nbf") > now + self._leeway:
            raise InvalidToken("token not yet valid")
        if claims["iss"] != self._issuer:
            raise InvalidToken("token rejected")
        audience = claims["aud"]
        if isinstance(audience, str):
            audience = [audience]
        if (not isinstance(audience, list) or not all(isinstance(a, str) for a in audience)
                or self._audience not in audience):
            raise InvalidToken("token rejected")
        if not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
            raise InvalidToken("token rejected")
