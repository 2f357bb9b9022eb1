"""Opaque, tamper-evident keyset cursors.

A cursor is the position of the last item of a page (``created_at``, ``product_id``) bound to the
list's owner and signed with HMAC-SHA256, so a client can neither forge a position nor reuse one
user's cursor on another's list. Binary packing keeps it short (54 characters); only that one
spelling is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from datetime import UTC, datetime, timedelta
from uuid import UUID

from favorites.domain.errors import InvalidCursor

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAYOUT = struct.Struct(">q16s")  # microseconds since epoch, product id
_MAC_BYTES = 16
#: The one spelling encode gives: unpadded URL-safe base64 of the packed position and MAC.
_ENCODED_LENGTH = -(-(_LAYOUT.size + _MAC_BYTES) * 4 // 3)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class CursorCodec:
    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, user_id: UUID, payload: bytes) -> bytes:
        return hmac.digest(self._key, user_id.bytes + payload, hashlib.sha256)[:_MAC_BYTES]

    def encode(self, user_id: UUID, created_at: datetime, product_id: UUID) -> str:
        micros = (created_at - _EPOCH) // timedelta(microseconds=1)
        payload = _LAYOUT.pack(micros, product_id.bytes)
        return _encode(payload + self._mac(user_id, payload))

    def decode(self, user_id: UUID, cursor: str) -> tuple[datetime, UUID]:
        if len(cursor) != _ENCODED_LENGTH:
            raise InvalidCursor("cursor is not one this service issued")
        try:
            # validate=True: the lenient decoder skips characters outside the alphabet, so an
            # edited cursor could decode to the same bytes and pass as the one issued.
            raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                   validate=True)
        except (binascii.Error, ValueError):
            raise InvalidCursor("cursor is not one this service issued") from None
        if len(raw) != _LAYOUT.size + _MAC_BYTES or _encode(raw) != cursor:
            # The last character's unused low bits must be zero, as encode leaves them.
            raise InvalidCursor("cursor is not one this service issued")
        payload, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not hmac.compare_digest(mac, self._mac(user_id, payload)):
            raise InvalidCursor("cursor is not one this service issued")
        micros, product = _LAYOUT.unpack(payload)
        return _EPOCH + timedelta(microseconds=micros), UUID(bytes=product)
