"""Compact, versioned encodings of cache entries and of the version token handed to callers.

The page entry's payload is ``favorites.domain.pages.FirstPage``'s (already the API's JSON); this
module adds the version tag every entry carries, the count's encoding and the version tokens.
"""

from __future__ import annotations

#: Versions are random in [1, 2**62): they never repeat in practice (no ABA when a key expires
#: and is set again) and ``epoch << 64 | version`` stays one Python int.
VERSION_BITS = 64
_VERSION_MASK = (1 << VERSION_BITS) - 1


def encode_count(count: int) -> bytes:
    return str(count).encode()


def decode_count(payload: bytes) -> int | None:
    return int(payload) if payload.isdigit() else None


def tag(version: bytes, payload: bytes) -> bytes:
    """Prefix an entry with the version it was loaded under (always a version key's value)."""
    return version + b":" + payload


def untag(entry: bytes | None, version: bytes | None) -> bytes | None:
    """The payload when ``entry`` was stored under the current ``version``, else None (a miss).

    Never without a version key: an entry once stored as "no version yet" (``0``, by earlier
    releases) would be served again after a write whose version key Redis then evicted.
    """
    if entry is None or version is None:
        return None
    stored, sep, payload = entry.partition(b":")
    if not sep or stored != version:
        return None
    return payload


def make_token(epoch: int, version: bytes | str | None) -> int:
    return (epoch << VERSION_BITS) | int(version or b"0")


def split_token(token: int) -> tuple[int, bytes]:
    """(epoch, version bytes as stored in Redis, ``b"0"`` for none). Only for tokens >= 0."""
    return token >> VERSION_BITS, str(token & _VERSION_MASK).encode()
