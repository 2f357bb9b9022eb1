from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from favorites.domain.cursor import CursorCodec
from favorites.domain.errors import InvalidCursor, ValidationFailed
from favorites.domain.ids import parse_uuid

SAMPLE = uuid.UUID("0b9c1a52-3f3a-4c1e-9d55-2f0a6c7e8b11")


@pytest.mark.parametrize(
    "text", [str(SAMPLE), str(SAMPLE).upper(), SAMPLE.hex, SAMPLE.hex.upper()]
)
def test_accepted_spellings_normalise(text: str) -> None:
    assert parse_uuid(text, "id") == SAMPLE


@pytest.mark.parametrize(
    "text", ["", "me", "123", "{" + str(SAMPLE) + "}", "urn:uuid:" + str(SAMPLE),
             str(SAMPLE) + "0", "g" * 32, "<script>", str(SAMPLE).replace("-", "_"),
             # What uuid.UUID itself would take: hyphens anywhere, and what int(…, 16) takes
             # (a sign, blanks, "_" between digits), each a second spelling or another id.
             SAMPLE.hex[:9] + "-" + SAMPLE.hex[9:12] + "-" + SAMPLE.hex[12:16] + "-"
             + SAMPLE.hex[16:20] + "-" + SAMPLE.hex[20:],
             SAMPLE.hex[:16] + "--" + SAMPLE.hex[16:] + "--",
             "+" + SAMPLE.hex[1:], " " + SAMPLE.hex[1:], SAMPLE.hex[:-1] + " ",
             SAMPLE.hex[:1] + "_" + SAMPLE.hex[2:], "\u0660" + SAMPLE.hex[1:],
             "0x" + SAMPLE.hex[2:]],
)
def test_everything_else_is_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_uuid(text, "id")


def test_cursor_round_trip_keeps_microseconds() -> None:
    codec = CursorCodec(b"secret" * 6)
    owner, product = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert codec.decode(owner, codec.encode(owner, at, product)) == (at, product)


@pytest.mark.parametrize("bad", ["", "x", "!!!!", "A" * 59, "A" * 500])
def test_garbage_cursors_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidCursor):
        CursorCodec(b"k" * 32).decode(uuid.uuid4(), bad)


def test_cursor_from_another_key_is_invalid() -> None:
    owner = uuid.uuid4()
    cursor = CursorCodec(b"a" * 32).encode(owner, datetime.now(UTC), uuid.uuid4())
    with pytest.raises(InvalidCursor):
        CursorCodec(b"b" * 32).decode(owner, cursor)


def test_only_the_issued_spelling_of_a_cursor_is_accepted() -> None:
    """Tamper-evident means any edit is refused, not only edits that change the decoded bytes:
    padding appended, a character outside the alphabet inserted (the lenient decoder skips it),
    the last character's unused bits set, standard base64's ``+/`` for ``-_``."""
    codec, owner = CursorCodec(b"k" * 32), uuid.uuid4()
    cursor = codec.encode(owner, datetime(2026, 5, 1, tzinfo=UTC), uuid.uuid4())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    edits = {cursor + "=", cursor + "==", " " + cursor, cursor + "\n",
             cursor.replace("-", "+").replace("_", "/")} - {cursor}
    for at in range(len(cursor) + 1):
        for char in alphabet + "!=.~ +/":
            edits.add(cursor[:at] + char + cursor[at:])  # inserted
            if at < len(cursor):
                edits.add(cursor[:at] + char + cursor[at + 1:])  # replaced
    edits.discard(cursor)
    accepted = []
    for edited in edits:
        try:
            codec.decode(owner, edited)
        except InvalidCursor:
            continue
        accepted.append(edited)
    assert accepted == [], f"{len(accepted)} of {len(edits)} edits accepted"
    assert len(edits) > 7000
    assert codec.decode(owner, cursor)[0] == datetime(2026, 5, 1, tzinfo=UTC)


def test_the_refused_spellings_are_ones_uuid_itself_takes() -> None:
    """The cases above that matter: each is a UUID to the standard library (some of them another
    one than SAMPLE), so only the explicit spelling check refuses them."""
    for text in ("0b9c1a523-f3a-4c1e-9d55-2f0a6c7e8b11", "+b9c1a523f3a4c1e9d552f0a6c7e8b11",
                 "0_9c1a523f3a4c1e9d552f0a6c7e8b11", "0b9c1a523f3a4c1e9d552f0a6c7e8b1 "):
        assert isinstance(uuid.UUID(text), uuid.UUID)
        with pytest.raises(ValidationFailed):
            parse_uuid(text, "id")
