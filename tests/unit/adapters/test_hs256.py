"""The HS256 verifier against PyJWT: whatever it accepts, PyJWT (the codec's ES256/RS256 path,
``JwtCodec._decode``) accepts too, with the same claims; what it refuses, it refuses for a reason.

The cases are valid tokens, tokens properly signed over claims of every wrong shape, and
thousands of random edits of the token text."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from favorites.adapters.tokens.hs256 import MAX_TOKEN_LENGTH, Hs256Verifier, decode_segment
from favorites.adapters.tokens.jwt import JwtCodec
from favorites.domain.errors import InvalidToken

SECRET = b"hs256-unit-secret-" + b"k" * 30
ISSUER, AUDIENCE = "favorites-service", "favorites"


def codec(leeway: int = 0) -> JwtCodec:
    return JwtCodec(algorithm="HS256", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=600,
                    leeway_seconds=leeway, secret=SECRET)


CODEC = codec()
KID = CODEC._kid
FAST = Hs256Verifier({KID: SECRET}, issuer=ISSUER, audience=AUDIENCE, leeway=0)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()),
                            "roles": ["user"], "iat": now, "exp": now + 600,
                            "jti": uuid.uuid4().hex, "typ": "access"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: dict[str, Any] | bytes, header: dict[str, Any] | None = None,
           key: bytes = SECRET) -> str:
    """A token whose signature is right for whatever header and payload bytes it carries."""
    head = b64(json.dumps(header if header is not None else
                          {"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    mac = jwt.get_algorithm_by_name("HS256").sign(f"{head}.{body}".encode(), key)
    return f"{head}.{body}.{b64(mac)}"


def outcome(verify: Callable[[str], dict[str, Any]], token: str) -> dict[str, Any] | None:
    try:
        return verify(token)
    except InvalidToken:
        return None


def assert_no_wider_than_pyjwt(token: str) -> dict[str, Any] | None:
    ours = outcome(FAST.verify, token)
    reference = outcome(CODEC._decode, token)
    if ours is not None:
        assert reference == ours, f"accepted what PyJWT refuses: {token!r}"
    return ours


def test_tokens_the_codec_mints_verify_with_the_same_claims_as_pyjwt() -> None:
    for roles in (("user",), ("admin",), ("admin", "user")):
        token, _ = CODEC.mint(uuid.uuid4(), roles)
        assert FAST.verify(token) == CODEC._decode(token)


@pytest.mark.parametrize("make", [
    lambda: claims(aud=[AUDIENCE]),
    lambda: claims(aud=["another", AUDIENCE]),
    lambda: claims(nbf=int(time.time()) - 5),
    lambda: claims(extra={"nested": [1, 2]}),
    lambda: claims(roles=[]),
], ids=["aud list", "aud among others", "nbf past", "extra claim", "no roles"])
def test_valid_variants_are_accepted_by_both(make: Callable[[], dict[str, Any]]) -> None:
    # Built when the test runs, not at collection: the suite can run for longer than the
    # tokens' ten minutes, and they would expire before this test verifies them.
    payload = make()
    token = signed(payload)
    assert FAST.verify(token) == CODEC._decode(token) == payload


#: Built when each test runs: dates relative to the time of collection would drift (the suite
#: runs for minutes), and "issued in the future" would become the past.
WRONG_CLAIMS: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("expired", lambda: claims(exp=int(time.time()) - 1), "token expired"),
    ("expires now", lambda: claims(exp=int(time.time())), "token expired"),
    ("issued in the future", lambda: claims(iat=int(time.time()) + 60), "issued in the future"),
    ("not yet valid", lambda: claims(nbf=int(time.time()) + 60), "not yet valid"),
    ("exp as text", lambda: claims(exp=str(int(time.time()) + 600)), "rejected"),
    ("exp as float", lambda: claims(exp=time.time() + 600.5), "rejected"),
    ("exp true", lambda: claims(exp=True), "rejected"),
    ("iat as text", lambda: claims(iat=str(int(time.time()))), "rejected"),
    ("nbf as text", lambda: claims(nbf="0"), "rejected"),
    ("huge exp", lambda: claims(exp=10 ** 30), "rejected"),  # beyond 64 bits: orjson reads a float
    ("wrong issuer", lambda: claims(iss="evil"), "rejected"),
    ("issuer list", lambda: claims(iss=[ISSUER]), "rejected"),
    ("wrong audience", lambda: claims(aud="other"), "rejected"),
    ("audience of numbers", lambda: claims(aud=[AUDIENCE, 1]), "rejected"),
    ("audience object", lambda: claims(aud={"a": AUDIENCE}), "rejected"),
    ("empty audience", lambda: claims(aud=[]), "rejected"),
    ("subject number", lambda: claims(sub=12), "rejected"),
    ("jti number", lambda: claims(jti=12), "rejected"),
    *[(f"no {name}", lambda name=name: claims(**{name: _DROP}), "rejected")
      for name in ("exp", "iat", "iss", "aud", "sub", "jti", "typ")],
    *[(f"null {name}", lambda name=name: claims(**{name: None}), "rejected")
      for name in ("exp", "iat", "iss", "aud", "sub", "jti", "typ")],
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in WRONG_CLAIMS],
                         ids=[name for name, _, _ in WRONG_CLAIMS])
def test_signed_tokens_with_wrong_claims_are_refused(make: Callable[[], dict[str, Any]],
                                                     reason: str) -> None:
    token = signed(make())
    with pytest.raises(InvalidToken, match=reason):
        FAST.verify(token)
    assert_no_wider_than_pyjwt(token)


WRONG_TOKENS: list[tuple[str, Callable[[], str], str]] = [
    ("alg none", lambda: signed(claims(), {"alg": "none", "kid": KID}).rsplit(".", 1)[0] + ".",
     "algorithm not accepted"),
    ("alg HS512", lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512",
                                     headers={"kid": KID}), "algorithm not accepted"),
    ("alg lower case", lambda: signed(claims(), {"alg": "hs256", "kid": KID}),
     "algorithm not accepted"),
    ("no kid", lambda: signed(claims(), {"alg": "HS256"}), "unknown signing key"),
    ("unknown kid", lambda: signed(claims(), {"alg": "HS256", "kid": "hs-other"}),
     "unknown signing key"),
    ("kid not text", lambda: signed(claims(), {"alg": "HS256", "kid": [KID]}),
     "unknown signing key"),
    ("another key", lambda: signed(claims(), key=b"another-secret-" + b"x" * 30), "rejected"),
    ("crit header", lambda: signed(claims(), {"alg": "HS256", "kid": KID, "crit": ["exp"]}),
     "rejected"),
    ("unencoded payload", lambda: signed(claims(), {"alg": "HS256", "kid": KID, "b64": False}),
     "rejected"),
    ("header not an object", lambda: signed(claims(), ["HS256"]), "malformed"),  # type: ignore[arg-type]
    ("payload not an object", lambda: signed(b"[1, 2]"), "malformed"),
    ("payload not JSON", lambda: signed(b"{'exp': 1}"), "malformed"),
    ("payload NaN", lambda: signed(b'{"exp": NaN}'), "malformed"),
    ("padded signature", lambda: signed(claims()) + "=", "malformed"),
    ("two segments", lambda: signed(claims()).rsplit(".", 1)[0], "malformed"),
    ("four segments", lambda: signed(claims()) + ".e30", "malformed"),
    ("white space", lambda: " " + signed(claims()), "malformed"),
    ("too long", lambda: signed(claims(pad="x" * MAX_TOKEN_LENGTH)), "malformed"),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in WRONG_TOKENS],
                         ids=[name for name, _, _ in WRONG_TOKENS])
def test_tokens_of_the_wrong_shape_are_refused(make: Callable[[], str], reason: str) -> None:
    token = make()
    with pytest.raises(InvalidToken, match=reason):
        FAST.verify(token)
    assert_no_wider_than_pyjwt(token)


def test_a_signature_spelled_two_ways_is_one_token_only() -> None:
    """The last character of a base64url segment carries spare bits; a token whose signature
    differs only there would otherwise be a second string for the same credential."""
    token = signed(claims())
    head, body, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = {f"{head}.{body}.{signature[:-1]}{c}" for c in alphabet} - {token}
    decodable = [v for v in variants
                 if base64.urlsafe_b64decode(v.rsplit(".", 1)[1] + "=")
                 == base64.urlsafe_b64decode(signature + "=")]
    assert decodable  # the spare bits exist: 43 characters carry 258 bits for 256
    for variant in decodable:
        with pytest.raises(InvalidToken, match="malformed"):
            FAST.verify(variant)


def test_leeway_is_applied_as_pyjwt_applies_it() -> None:
    lenient = Hs256Verifier({KID: SECRET}, issuer=ISSUER, audience=AUDIENCE, leeway=30)
    reference = codec(leeway=30)
    now = int(time.time())
    for payload in (claims(exp=now - 10), claims(iat=now + 10), claims(nbf=now + 10),
                    claims(exp=now - 40), claims(iat=now + 40), claims(nbf=now + 40)):
        token = signed(payload)
        assert outcome(lenient.verify, token) == outcome(reference._decode, token)


def _edit(rng: random.Random, token: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    i = rng.randrange(len(token))
    edit = rng.randrange(5)
    if edit == 0:  # change a character
        return token[:i] + rng.choice(alphabet) + token[i + 1:]
    if edit == 1:  # insert one
        return token[:i] + rng.choice(alphabet) + token[i:]
    if edit == 2:  # delete one
        return token[:i] + token[i + 1:]
    head, body, signature = token.split(".")
    if edit == 3:  # swap segments
        parts = [head, body, signature]
        rng.shuffle(parts)
        return ".".join(parts)
    # a payload of another shape, correctly signed
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    name = rng.choice(sorted(payload))
    payload[name] = rng.choice([None, 0, 1, -1, True, "", "x", [], {}, [AUDIENCE], 1.5,
                                int(time.time()) + 600, str(uuid.uuid4()), payload[name]])
    return signed(payload)


def test_random_edits_are_never_accepted_where_pyjwt_refuses() -> None:
    rng = random.Random(20261127)
    accepted = refused = 0
    for _ in range(3000):
        token = _edit(rng, signed(claims()))
        if assert_no_wider_than_pyjwt(token) is None:
            refused += 1
        else:
            accepted += 1
    # Both kinds occur in numbers: the comparison above was made on each side.
    assert accepted > 100
    assert refused > 1500


def test_a_header_is_remembered_only_once_it_signed_a_good_token() -> None:
    """Every token of a key carries the same header, so the verifier decodes it once; but a
    header is read before the signature is known, and anyone can write one: only headers of
    tokens whose signature checked out are remembered, a bounded few."""
    verifier = Hs256Verifier({KID: SECRET}, issuer=ISSUER, audience=AUDIENCE, leeway=0)
    for n in range(200):  # well-formed headers naming the key, signed with another
        forged = signed(claims(), {"alg": "HS256", "kid": KID, "n": n}, key=b"x" * 48)
        with pytest.raises(InvalidToken, match="rejected"):
            verifier.verify(forged)
    assert verifier._headers == {}
    for n in range(200):  # properly signed, each with its own header
        verifier.verify(signed(claims(), {"alg": "HS256", "kid": KID, "n": n}))
    assert len(verifier._headers) == 16
    token = CODEC.mint(uuid.uuid4(), ("user",))[0]
    assert verifier.verify(token) == CODEC._decode(token)
    # A remembered header does not vouch for anything else: the signature is checked each time,
    # and only its canonical spelling passes.
    head, body, signature = token.split(".")
    twin = signed(claims())
    with pytest.raises(InvalidToken, match="rejected"):
        verifier.verify(f"{head}.{twin.split('.')[1]}.{signature}")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = [f"{head}.{body}.{signature[:-1]}{c}" for c in alphabet
                 if c != signature[-1] and base64.urlsafe_b64decode(signature[:-1] + c + "=")
                 == base64.urlsafe_b64decode(signature + "=")]
    assert respelled
    for variant in respelled:
        with pytest.raises(InvalidToken, match="malformed"):
            verifier.verify(variant)


def test_a_payload_spelled_with_spare_bits_is_refused_even_when_signed() -> None:
    """Only the canonical spelling of a segment is one: with the spare bits of its last
    character set, a payload is refused, signed or not, as PyJWT refuses it."""
    payload = json.dumps(claims()).encode()
    while len(b64(payload)) % 4 not in (2, 3):
        payload += b" "
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(payload)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = [f"{body[:-1]}{c}" for c in alphabet
                 if c != body[-1] and base64.urlsafe_b64decode(f"{body[:-1]}{c}" + "==")
                 == base64.urlsafe_b64decode(body + "==")]
    assert respelled
    for spare in respelled:
        mac = jwt.get_algorithm_by_name("HS256").sign(f"{head}.{spare}".encode(), SECRET)
        token = f"{head}.{spare}.{b64(mac)}"
        with pytest.raises(InvalidToken, match="malformed"):
            FAST.verify(token)
        assert outcome(CODEC._decode, token) is None
    assert FAST.verify(signed(payload)) == json.loads(payload)


@pytest.mark.parametrize("text", ["eyJ+IjoxfQ", "eyJ/IjoxfQ", "eyJh!joxfQ", "eyJh IjoxfQ",
                                  "eyJhIjoxfQ==", "eyJhIjoxfR", "e"])
def test_a_segment_decodes_only_in_its_one_canonical_spelling(text: str) -> None:
    """Standard base64's ``+`` and ``/``, characters of no alphabet, padding, spare bits set, a
    length that encodes nothing: each a second spelling of some segment, or none."""
    assert decode_segment(b64(b'{"a":1}')) == b'{"a":1}'
    with pytest.raises(InvalidToken, match="malformed"):
        decode_segment(text)
