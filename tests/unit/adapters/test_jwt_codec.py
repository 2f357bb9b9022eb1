from __future__ import annotations

import gc
import time
import uuid

import jwt
import pytest

from favorites.adapters.tokens.jwt import JwtCodec, unverified_header
from favorites.domain.errors import InvalidToken

SECRET = b"unit-secret-" + b"q" * 30


def codec(ttl: int = 3600, leeway: int = 0) -> JwtCodec:
    return JwtCodec(algorithm="HS256", issuer="favorites-service", audience="favorites",
                    ttl_seconds=ttl, leeway_seconds=leeway, secret=SECRET)


def test_minted_tokens_verify_and_carry_the_claims() -> None:
    c = codec()
    user = uuid.uuid4()
    token, ttl = c.mint(user, ("admin",))
    principal = c.verify(token)
    assert ttl == 3600
    assert principal.user_id == user
    assert principal.is_admin
    assert principal.token_id is not None
    assert jwt.get_unverified_header(token)["kid"].startswith("hs-")


def test_a_remembered_token_still_expires() -> None:
    """The verified-token memory must not outlive the token's exp."""
    c = codec()
    user = uuid.uuid4()
    now = int(time.time())
    kid = jwt.get_unverified_header(c.mint(user, ("user",))[0])["kid"]
    short = jwt.encode({"iss": "favorites-service", "aud": "favorites", "sub": str(user),
                        "roles": ["user"], "iat": now, "exp": now + 1, "jti": "j1",
                        "typ": "access"}, SECRET, algorithm="HS256", headers={"kid": kid})
    assert c.verify(short).user_id == user  # verified and remembered
    time.sleep(1.1)
    with pytest.raises(InvalidToken):
        c.verify(short)


def test_a_bad_token_is_never_remembered_as_good() -> None:
    c = codec()
    token, _ = c.mint(uuid.uuid4(), ("user",))
    forged = token[:-3] + ("aaa" if token[-3:] != "aaa" else "bbb")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            c.verify(forged)


def test_remembered_tokens_give_the_garbage_collector_nothing_to_walk() -> None:
    """Every full collection walks every tracked object: a per-token Principal (with its UUID and
    frozenset) in the memory of 20,000 tokens made those pauses 30 ms under load. Only the
    Principals of the last thousand tokens stay built."""
    c = codec()
    tokens = [c.mint(uuid.uuid4(), ("user",))[0] for _ in range(20_000)]
    c.verify(c.mint(uuid.uuid4(), ("user",))[0])  # first use: whatever PyJWT sets up once
    gc.collect()
    before = len(gc.get_objects())
    principals = [c.verify(token) for token in tokens]
    assert c.verify(tokens[0]) == principals[0]  # answered from memory, same principal
    del principals
    gc.collect()
    # Three objects per token before; now three per recent token and few others.
    assert len(gc.get_objects()) - before < len(tokens) / 4


@pytest.mark.parametrize("token", [
    "", "not.a.jwt", "....", "W10.e30.sig", "bnVsbA.e30.sig", "%%%.e30.sig",
    "\u00e9.e30.sig", jwt.utils.base64url_encode(b'{"alg":"HS256"').decode() + ".e30.sig",
])
def test_a_token_whose_header_is_not_a_json_object_is_malformed(token: str) -> None:
    with pytest.raises(InvalidToken, match="malformed token"):
        unverified_header(token)
    with pytest.raises(InvalidToken):
        codec().verify(token)


def test_the_header_read_to_pick_the_key_is_pyjwts_reading() -> None:
    c = codec()
    token, _ = c.mint(uuid.uuid4(), ("user",))
    assert unverified_header(token) == jwt.get_unverified_header(token)


def test_the_header_names_the_key_but_pyjwt_still_checks_everything() -> None:
    """alg "none", another algorithm, an unknown kid, a forged signature: all refused."""
    c = codec()
    user = uuid.uuid4()
    kid = unverified_header(c.mint(user, ("user",))[0])["kid"]
    claims = {"iss": "favorites-service", "aud": "favorites", "sub": str(user), "roles": ["user"],
              "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "j", "typ": "access"}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
    other_alg = jwt.encode(claims, SECRET * 2, algorithm="HS512", headers={"kid": kid})
    unknown_kid = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "hs-unknown"})
    forged = jwt.encode(claims, b"another-secret-" + b"x" * 30, algorithm="HS256",
                        headers={"kid": kid})
    for token, reason in ((unsigned, "algorithm not accepted"),
                          (other_alg, "algorithm not accepted"),
                          (unknown_kid, "unknown signing key"), (forged, "token rejected")):
        with pytest.raises(InvalidToken, match=reason):
            c.verify(token)


_DROP = object()


@pytest.mark.parametrize("roles", [_DROP, None, [], "user", ["user", "root"], [["user"]],
                                   [{"role": "user"}], [1]],
                         ids=["missing", "null", "empty", "a string", "unknown role",
                              "nested list", "object", "number"])
def test_a_token_must_name_its_roles(roles: object) -> None:
    """SPEC §4: ``roles`` is one of the access token's claims. A token signed with the right key
    that names no known role is refused (401), not taken for a plain user's; and no shape of the
    claim (an object inside the list) gets past as an error other than 401."""
    c = codec()
    user = uuid.uuid4()
    kid = unverified_header(c.mint(user, ("user",))[0])["kid"]
    now = int(time.time())
    claims = {"iss": "favorites-service", "aud": "favorites", "sub": str(user),
              "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex, "typ": "access"}
    if roles is not _DROP:
        claims["roles"] = roles
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="roles not accepted"):
        c.verify(token)
    claims["roles"] = ["user"]
    assert c.verify(jwt.encode(claims, SECRET, algorithm="HS256",
                               headers={"kid": kid})).user_id == user
