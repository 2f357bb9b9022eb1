"""Feature flags from a flagd file: defaults, sticky rollout, hot reload, bad files.

Real files and the real OpenFeature/flagd evaluator; nothing is faked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from favorites.adapters.flags import FlagsFileError, OpenFeatureFlags
from favorites.domain.flags import ENABLE_FAVORITES_V2
from tests.flagfiles import rollout, write

USERS = [uuid.UUID(int=n * 7919 + 1) for n in range(2000)]


@pytest.fixture
def started() -> Iterator[list[OpenFeatureFlags]]:
    opened: list[OpenFeatureFlags] = []
    yield opened
    for flags in opened:
        flags.close()


def _open(path: Path | None, opened: list[OpenFeatureFlags], poll_ms: int = 100) -> OpenFeatureFlags:
    flags = OpenFeatureFlags(path, poll_ms=poll_ms)
    flags.start()
    opened.append(flags)
    return flags


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """The file is polled every 100 ms here; give a loaded machine plenty of time."""
    for _ in range(int(seconds / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)


def _enabled(flags: OpenFeatureFlags) -> set[uuid.UUID]:
    return {user for user in USERS if flags.enabled(ENABLE_FAVORITES_V2, user)}


async def test_without_a_file_every_flag_is_at_its_default(started: list[OpenFeatureFlags]) -> None:
    flags = _open(None, started)
    assert _enabled(flags) == set()
    assert await flags.readiness() == "ok"


def test_asking_for_an_unknown_flag_is_a_bug(started: list[OpenFeatureFlags]) -> None:
    with pytest.raises(KeyError):
        _open(None, started).enabled("enable_everything", USERS[0])


def test_percentage_rollout_is_sticky_and_grows_without_dropping_anyone(
    tmp_path: Path, started: list[OpenFeatureFlags]
) -> None:
    at_10 = _enabled(_open(write(tmp_path / "10.json", rollout(10)), started))
    again = _enabled(_open(write(tmp_path / "10b.json", rollout(10)), started))
    at_50 = _enabled(_open(write(tmp_path / "50.json", rollout(50)), started))
    at_100 = _enabled(_open(write(tmp_path / "100.json", rollout(100)), started))
    # 2,000 users: 10 % is 200 expected; ±60 is over 4 standard deviations.
    assert 140 <= len(at_10) <= 260, len(at_10)
    assert 880 <= len(at_50) <= 1120, len(at_50)
    assert again == at_10  # another instance (or a restart) gives every user the same answer
    assert at_10 <= at_50  # nobody who had v2 at 10 % loses it at 50 %
    assert at_100 == set(USERS)


def test_rollouts_of_different_flags_pick_different_users(
    tmp_path: Path, started: list[OpenFeatureFlags]
) -> None:
    """The flag key is part of the hash, so the same 10 % are not the guinea pigs every time."""
    other = rollout(10, "enable_other")
    path = write(tmp_path / "flags.json", {"flags": {**rollout(10)["flags"],  # type: ignore[dict-item]
                                                     **other["flags"]}})  # type: ignore[dict-item]
    flags = OpenFeatureFlags(path, defaults={ENABLE_FAVORITES_V2: False, "enable_other": False})
    flags.start()
    started.append(flags)
    v2 = {u for u in USERS if flags.enabled(ENABLE_FAVORITES_V2, u)}
    other_users = {u for u in USERS if flags.enabled("enable_other", u)}
    assert v2
    assert other_users
    assert v2 != other_users


async def test_a_changed_file_applies_without_a_restart(
    tmp_path: Path, started: list[OpenFeatureFlags]
) -> None:
    path = write(tmp_path / "flags.json", rollout(0))
    flags = _open(path, started)
    assert _enabled(flags) == set()
    write(path, rollout(100))

    async def switched() -> bool:
        return flags.enabled(ENABLE_FAVORITES_V2, USERS[0])

    await _until(switched)
    assert _enabled(flags) == set(USERS)


async def test_a_file_that_turns_bad_keeps_the_last_good_flags_and_shows_stale(
    tmp_path: Path, started: list[OpenFeatureFlags]
) -> None:
    path = write(tmp_path / "flags.json", rollout(100))
    flags = _open(path, started)
    write(path, "{ not json")

    async def stale() -> bool:
        return await flags.readiness() == "stale"

    await _until(stale)
    assert await flags.readiness() == "stale"
    assert _enabled(flags) == set(USERS)
    write(path, rollout(0))

    async def recovered() -> bool:
        return await flags.readiness() == "ok"

    await _until(recovered)
    assert await flags.readiness() == "ok"
    assert _enabled(flags) == set()


@pytest.mark.parametrize(("content", "reason"), [
    ("{ not json", "Expecting property name"),
    ("[]", '"flags" object'),
    ('{"flags": {"enable_favorites_v2": {"state": "ENABLED"}}}', "variants"),
    ('{"flags": {"enable_favorites_v2": {"state": "ENABLED", "variants": {"on": true},'
     ' "defaultVariant": "of"}}}', "defaultVariant"),
    ('{"flags": {"enable_favorites_v2": {"state": "ENABLED", "variants": {"on": "yes"},'
     ' "defaultVariant": "on"}}}', "true or false"),
    ('{"flags": {"enable_favorites_v2": {"state": "SOMETIMES", "variants": {"on": true},'
     ' "defaultVariant": "on"}}}', "'state' value"),
])
def test_a_bad_file_is_refused_at_start_up(tmp_path: Path, content: str, reason: str) -> None:
    path = write(tmp_path / "flags.json", content)
    with pytest.raises(FlagsFileError, match=reason):
        OpenFeatureFlags(path)


def test_a_missing_file_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(FlagsFileError, match="No such file"):
        OpenFeatureFlags(tmp_path / "absent.json")


def test_yaml_files_are_read_too(tmp_path: Path, started: list[OpenFeatureFlags]) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(  # quoted: YAML 1.1 reads a bare on/off as a boolean
        "flags:\n  enable_favorites_v2:\n    state: ENABLED\n"
        "    variants: {'on': true, 'off': false}\n    defaultVariant: 'on'\n"
    )
    assert _enabled(_open(path, started)) == set(USERS)
