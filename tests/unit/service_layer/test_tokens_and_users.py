from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from favorites.domain.errors import Forbidden, InvalidToken, ScopeMissing
from favorites.domain.models import AuditAction, Favorite
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import DELETE_BATCH, ProductsService
from favorites.service_layer.tokens import TokenService, hash_refresh_token
from favorites.service_layer.users import UsersService
from tests.unit.fakes import FakeClock, FakeDatabase, RecordingCache
from tests.unit.service_layer.conftest import service_client, user


class FakeSigner:
    def __init__(self) -> None:
        self.minted: list[tuple[uuid.UUID, tuple[str, ...]]] = []
        self.token_ids: list[str | None] = []

    def mint(self, user_id: uuid.UUID, roles: tuple[str, ...],
             token_id: str | None = None) -> tuple[str, int]:
        self.minted.append((user_id, roles))
        self.token_ids.append(token_id)
        return f"access-{len(self.minted)}", 3600


class FakeRevocations:
    def __init__(self) -> None:
        self.revoked: dict[str, int] = {}

    def revoke_locally(self, jti: str, expires_at: int) -> None:
        self.revoked[jti] = expires_at


@pytest.fixture
def tokens(db: FakeDatabase, clock: FakeClock) -> TokenService:
    return TokenService(db, FakeSigner(), FakeRevocations(), clock, refresh_ttl_seconds=3600,
                        token_leeway_seconds=LEEWAY)


ISSUER = service_client("tokens:issue")
#: Seconds a token is accepted past its expiry (FAVORITES_JWT_LEEWAY_SECONDS' default).
LEEWAY = 30


async def test_issue_needs_the_scope_and_stores_only_a_hash(
    tokens: TokenService, db: FakeDatabase
) -> None:
    with pytest.raises(ScopeMissing):
        await tokens.issue(service_client("products:write"), uuid.uuid4(), ("user",))
    pair = await tokens.issue(ISSUER, uuid.uuid4(), ("user",))
    [stored] = db.state.refresh.values()
    assert stored.token_hash == hash_refresh_token(pair.refresh_token)
    assert pair.refresh_token not in repr(db.state)


async def test_refresh_rotates_and_reuse_revokes_the_family(
    tokens: TokenService, db: FakeDatabase
) -> None:
    owner = uuid.uuid4()
    first = await tokens.issue(ISSUER, owner, ("admin",))
    second = await tokens.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    with pytest.raises(InvalidToken):
        await tokens.refresh(first.refresh_token)  # replay of a spent token
    with pytest.raises(InvalidToken):
        await tokens.refresh(second.refresh_token)  # the whole family is gone
    revoked = [e for e, _ in db.state.audit if e.action is AuditAction.TOKEN_FAMILY_REVOKED]
    assert len(revoked) == 1
    assert revoked[0].outcome == "reuse_detected"


async def test_revoking_a_family_revokes_the_access_tokens_it_issued(
    tokens: TokenService, db: FakeDatabase, clock: FakeClock
) -> None:
    """Reuse detection: whoever refreshed with a stolen token loses its access token too, at
    once on this instance and through the shared list everywhere else; an expired one is not
    listed again."""
    signer, revocations = tokens._signer, tokens._revocations
    assert isinstance(signer, FakeSigner)
    assert isinstance(revocations, FakeRevocations)
    owner = uuid.uuid4()
    first = await tokens.issue(ISSUER, owner, ("user",))
    second = await tokens.refresh(first.refresh_token)  # the thief's pair, say
    other_family = await tokens.issue(ISSUER, owner, ("user",))
    with pytest.raises(InvalidToken):
        await tokens.refresh(first.refresh_token)
    family_jtis = set(signer.token_ids[:2])
    assert None not in family_jtis
    assert len(family_jtis) == 2
    assert set(revocations.revoked) == family_jtis
    assert family_jtis <= set(db.state.revoked)
    assert signer.token_ids[2] not in db.state.revoked  # another family: untouched
    for jti in family_jtis:  # listed until the token would have expired, not longer
        expires = revocations.revoked[jti]
        assert clock.now().timestamp() + 3600 <= expires <= clock.now().timestamp() + 3602
    del second, other_family


async def test_logout_revokes_every_live_access_token_of_the_family(
    db: FakeDatabase, clock: FakeClock
) -> None:
    signer, revocations = FakeSigner(), FakeRevocations()
    tokens = TokenService(db, signer, revocations, clock, refresh_ttl_seconds=30 * 86400,
                          token_leeway_seconds=LEEWAY)
    owner = uuid.uuid4()
    first = await tokens.issue(ISSUER, owner, ("user",))
    clock.advance(3700)  # the first access token has expired by now, leeway included
    second = await tokens.refresh(first.refresh_token)
    third = await tokens.refresh(second.refresh_token)
    expires = int(clock.now().timestamp()) + 3600
    presented = replace(user(owner), token_id=signer.token_ids[2], token_expires_at=expires)
    await tokens.logout(presented, third.refresh_token)
    assert set(revocations.revoked) == {signer.token_ids[1], signer.token_ids[2]}
    assert signer.token_ids[0] not in db.state.revoked


async def test_refresh_keeps_roles_and_expiry_is_enforced(
    tokens: TokenService, clock: FakeClock
) -> None:
    owner = uuid.uuid4()
    pair = await tokens.issue(ISSUER, owner, ("admin",))
    signer = tokens._signer
    assert isinstance(signer, FakeSigner)
    await tokens.refresh(pair.refresh_token)
    assert signer.minted[-1] == (owner, ("admin",))
    late = await tokens.issue(ISSUER, owner, ("user",))
    clock.advance(3601)
    with pytest.raises(InvalidToken):
        await tokens.refresh(late.refresh_token)


async def test_logout_revokes_family_and_access_token(
    tokens: TokenService, db: FakeDatabase
) -> None:
    owner = uuid.uuid4()
    pair = await tokens.issue(ISSUER, owner, ("user",))
    principal = user(owner)
    with pytest.raises(Forbidden):
        await tokens.logout(user(uuid.uuid4()), pair.refresh_token)
    await tokens.logout(principal, pair.refresh_token)
    assert principal.token_id in db.state.revoked
    revocations = tokens._revocations
    assert isinstance(revocations, FakeRevocations)
    assert principal.token_id in revocations.revoked
    with pytest.raises(InvalidToken):
        await tokens.refresh(pair.refresh_token)


async def test_erasure_deletes_everything_and_pseudonymises_audit(
    db: FakeDatabase, clock: FakeClock, cache: RecordingCache, service: FavoritesService,
    products: ProductsService, tokens: TokenService,
) -> None:
    revocations = FakeRevocations()
    users = UsersService(db, cache, clock, b"p" * 32, revocations, token_leeway_seconds=LEEWAY)
    owner = uuid.uuid4()
    product = uuid.uuid4()
    await products.register_many([product])
    await service.add(user(owner), owner, product)
    await tokens.issue(ISSUER, owner, ("user",))
    await tokens.issue(ISSUER, owner, ("user",))
    bystander_id = uuid.uuid4()
    bystander = await tokens.issue(ISSUER, bystander_id, ("user",))
    signer = tokens._signer
    assert isinstance(signer, FakeSigner)
    with pytest.raises(ScopeMissing):
        await users.erase(service_client("tokens:issue"), owner)
    assert await users.erase(service_client("users:erase"), owner) == 1
    assert await users.erase(service_client("users:erase"), owner) == 0  # harmless again
    assert not db.state.favorites
    assert [r.user_id for r in db.state.refresh.values()] == [bystander_id]  # only theirs left
    text = repr(db.state.audit)
    assert str(owner) not in text
    assert users.pseudonym(owner) in text
    assert [e.action for e, _ in db.state.audit].count(AuditAction.USER_ERASED) == 2
    assert cache.purged[-1] == owner  # deleted, not only made unreachable
    # Both access tokens the user held are revoked, here at once and in the shared list.
    assert set(revocations.revoked) == set(signer.token_ids[:2])
    assert set(signer.token_ids[:2]) <= set(db.state.revoked)
    assert signer.token_ids[2] not in db.state.revoked
    del bystander


async def test_product_delete_purges_favorites_in_batches(
    db: FakeDatabase, products: ProductsService, cache: RecordingCache
) -> None:
    product = uuid.uuid4()
    await products.register_many([product])
    at = FakeClock().now()
    for _ in range(DELETE_BATCH + 5):
        owner = uuid.uuid4()
        db.state.favorites[(owner, product)] = Favorite(owner, product, at)
    await products.delete(service_client("products:write"), product)
    commits_before = db.commits
    assert await products.purge_favorites(product) == DELETE_BATCH + 5
    assert db.commits - commits_before == 2  # one full batch, one partial
    assert not db.state.favorites
    assert len(cache.invalidated) == DELETE_BATCH + 5


async def test_tokens_still_accepted_in_the_leeway_are_revoked_with_their_family_and_user(
    db: FakeDatabase, clock: FakeClock, cache: RecordingCache
) -> None:
    """An access token 10 s past its expiry is still accepted for 20 s more (the leeway): a
    reuse's revocation of the family, and an erasure, must take it along."""
    signer, revocations = FakeSigner(), FakeRevocations()
    tokens = TokenService(db, signer, revocations, clock, refresh_ttl_seconds=30 * 86400,
                          token_leeway_seconds=LEEWAY)
    owner = uuid.uuid4()
    first = await tokens.issue(ISSUER, owner, ("user",))
    clock.advance(3610)
    await tokens.refresh(first.refresh_token)
    with pytest.raises(InvalidToken):
        await tokens.refresh(first.refresh_token)  # reuse: the family is revoked
    assert signer.token_ids[0] in revocations.revoked

    erased = uuid.uuid4()
    await tokens.issue(ISSUER, erased, ("user",))
    clock.advance(3610)
    users = UsersService(db, cache, clock, b"p" * 32, revocations, token_leeway_seconds=LEEWAY)
    await users.erase(service_client("users:erase"), erased)
    assert signer.token_ids[-1] in revocations.revoked
