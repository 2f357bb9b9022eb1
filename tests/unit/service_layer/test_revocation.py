"""Revoked access tokens stay revoked for as long as the codec still accepts them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

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


def _revoke(db: FakeDatabase, jti: str, stamped: datetime) -> None:
    """A revocation as its transaction commits: stamped when written, maybe long before."""
    db.state.revoked[jti] = (stamped, START + timedelta(hours=1))


async def test_a_revocation_committed_after_a_newer_one_is_learnt_at_the_next_pull() -> None:
    """Pulls read from the newest stamp seen minus the overlap: a revocation stamped before
    the newest one, whose transaction committed later, is not skipped."""
    db, clock = FakeDatabase(), FakeClock(START)
    revocations = RevocationList(db, clock, overlap=60)
    _revoke(db, "quick", START)
    await revocations.sync()
    _revoke(db, "slow", START - timedelta(seconds=50))  # written first, committed after
    await revocations.sync()
    assert revocations.is_revoked("slow")


async def test_one_committed_later_than_the_overlap_is_learnt_by_the_next_full_pull() -> None:
    """Past the overlap an incremental pull cannot see it; every ``full_every``-th pull reads
    every unexpired revocation, so none is missed for longer than that."""
    db, clock = FakeDatabase(), FakeClock(START)
    revocations = RevocationList(db, clock, overlap=60, full_every=3)
    _revoke(db, "quick", START)
    await revocations.sync()  # pull 0: full
    _revoke(db, "stalled", START - timedelta(minutes=5))
    await revocations.sync()  # pulls 1 and 2: from the newest stamp minus the overlap
    await revocations.sync()
    assert not revocations.is_revoked("stalled")
    await revocations.sync()  # pull 3: full
    assert revocations.is_revoked("stalled")


async def test_a_failing_database_is_one_warning_per_outage_and_one_line_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db, clock = FakeDatabase(), FakeClock(START)
    down = True

    def unit_of_work(**kwargs: object) -> object:
        if down:
            raise OSError("connection refused")
        return db(**kwargs)

    revocations = RevocationList(unit_of_work, clock, interval=0.01)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="favorites.revocation")
    await revocations.start()
    try:
        await asyncio.sleep(0.2)  # about twenty failed pulls
        down = False
        await asyncio.sleep(0.1)
    finally:
        await revocations.stop()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0][0] == "WARNING"  # at start-up
    assert [level for level, _ in lines[1:]] == ["WARNING", "INFO"]
    assert lines[-1][1].startswith("revocation sync recovered after ")
