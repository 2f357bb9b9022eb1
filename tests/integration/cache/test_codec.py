"""Entry encodings (shared by blue and green versions through Redis) and version tokens."""

from __future__ import annotations

from favorites.adapters.cache import codec


def test_an_unknown_count_entry_is_a_miss_not_an_error() -> None:
    assert codec.decode_count(b"-1") is None
    assert codec.decode_count(codec.encode_count(12)) == 12


def test_entries_are_valid_only_under_the_version_they_were_loaded_under() -> None:
    entry = codec.tag(b"42", b"payload")
    assert codec.untag(entry, b"42") == b"payload"
    assert codec.untag(entry, b"43") is None
    assert codec.untag(entry, None) is None
    assert codec.untag(b"0:p", None) is None  # "no version yet" (earlier releases): a miss
    assert codec.untag(b"garbage", b"42") is None
    assert codec.untag(None, b"42") is None


def test_a_token_carries_the_epoch_and_the_version() -> None:
    version = str((1 << 62) - 5).encode()
    token = codec.make_token(123, version)
    assert codec.split_token(token) == (123, version)
    assert codec.split_token(codec.make_token(0, None)) == (0, b"0")
