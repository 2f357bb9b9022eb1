"""Feature flags from a flagd file: defaults, sticky rollout, hot reload, bad files.

Real files and the real OpenFeature/flagd evaluator; nothing is faked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from favorites.adapters.flags import FlagsFileError, OpenFeatureFlags, check_flags_file
from favorites.domain.flags import ENABLE_FAVORITES_V2
from tests.flagfiles import rollout, write

USERS = [uuid.UUID(int=n * 7919 + 1) for n in range(2000)]
LOG = "favorites.adapters.flags.openfeature"


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


async def test_a_file_that_turns_bad_keeps_the_last_good_flags_shows_stale_and_says_so_once(
    tmp_path: Path, started: list[OpenFeatureFlags], caplog: pytest.LogCaptureFixture
) -> None:
    """The last good flags stay in force and readiness says ``stale``; not an ERROR with a
    stack trace at every poll while the file stays bad, but one WARN saying why, and one INFO
    when a good file is back and applies."""
    caplog.set_level(logging.INFO, logger=LOG)
    path = write(tmp_path / "flags.json", rollout(100))
    flags = _open(path, started)
    write(path, "{broken")

    async def stale() -> bool:
        return await flags.readiness() == "stale"

    await _until(stale)
    await asyncio.sleep(1)  # ten more polls of the bad file
    assert await flags.readiness() == "stale"
    assert _enabled(flags) == set(USERS)
    write(path, rollout(0))

    async def recovered() -> bool:
        return await flags.readiness() == "ok"

    await _until(recovered)
    assert _enabled(flags) == set()
    ours = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG]
    assert ours == [
        (logging.WARNING, "flag file unusable, keeping the last good flags: "
                          f"{path}: Expecting property name enclosed in double quotes: "
                          "line 1 column 2 (char 1)"),
        (logging.INFO, f"flag file valid again, its flags apply: {path}"),
    ]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_reload_that_start_up_would_refuse_keeps_the_last_good_flags(
    tmp_path: Path, started: list[OpenFeatureFlags], caplog: pytest.LogCaptureFixture
) -> None:
    """The provider itself loads string variants for a boolean flag, which turns the flag to its
    default for everyone; the same rules as at start-up apply to each reload."""
    caplog.set_level(logging.INFO, logger=LOG)
    path = write(tmp_path / "flags.json", rollout(100))
    flags = _open(path, started)
    write(path, '{"flags": {"enable_favorites_v2": {"state": "ENABLED", "variants": {"on": "yes"},'
                ' "defaultVariant": "on"}}}')

    async def stale() -> bool:
        return await flags.readiness() == "stale"

    await _until(stale)
    assert await flags.readiness() == "stale"
    assert _enabled(flags) == set(USERS)
    assert [r.getMessage() for r in caplog.records if r.name == LOG] == [
        f"flag file unusable, keeping the last good flags: {path}: flag enable_favorites_v2: "
        "every variant must be true or false"]


def test_a_file_changed_between_the_check_and_the_start_says_why(tmp_path: Path) -> None:
    path = write(tmp_path / "flags.json", rollout(100))
    flags = OpenFeatureFlags(path)
    write(path, "{broken")
    with pytest.raises(FlagsFileError, match="Expecting property name"):
        flags.start()


def test_a_yml_file_is_refused_with_the_name_the_provider_reads_as_yaml(tmp_path: Path) -> None:
    """The flagd provider parses any name but *.yaml as JSON: a .yml file would pass the check
    and then fail to start (or fail each reload) with a JSON error."""
    path = tmp_path / "flags.yml"
    path.write_text("flags: {}\n")
    with pytest.raises(FlagsFileError, match=r"must be named \*\.yaml"):
        check_flags_file(path)


def test_check_names_the_flags_the_service_does_not_know(tmp_path: Path) -> None:
    path = write(tmp_path / "flags.json", {"flags": {
        **rollout(10)["flags"], **rollout(10, "enable_favorites_v3")["flags"],  # type: ignore[dict-item]
        **rollout(10, "a_typo")["flags"]}})  # type: ignore[dict-item]
    assert check_flags_file(path) == ["a_typo", "enable_favorites_v3"]
    assert check_flags_file(write(tmp_path / "known.json", rollout(10))) == []
