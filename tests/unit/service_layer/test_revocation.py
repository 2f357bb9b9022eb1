"""Revoked access tokens stay revoked for as long as the codec still accepts them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from favorites.service_layer.revocation import RevocationList
from tests.unit.fakes import FakeClock, FakeDatabase

START = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_revocation_outlasts_the_token_by_the_codecs_leeway() -> None:
    """The codec accepts a token up to ``leeway`` seconds after its ``exp``; a revocation that
    was dropped at ``exp`` made a logged-out token work again in that window."""
    db, clock = FakeDatabase(), FakeClock(START)
    db.state.revoked["logged-out"] = (START, START + timedelta(seconds=10))  # revoked, exp +10 s
    revocations = RevocationList(db, clock, leeway=30)
    await revocations.sync()
    assert revocations.is_revoked("logged-out")
    clock.advance(25)  # past exp, inside the leeway: a new instance learns of it too
    fresh = RevocationList(db, clock, leeway=30)
    await fresh.sync()
    for listing in (revocations, fresh):
        await listing.sync()
        assert listing.is_revoked("logged-out")
    clock.advance(20)  # past exp + leeway: the codec refuses the token by itself
    await revocations.sync()
    assert not revocations.is_revoked("logged-out")
