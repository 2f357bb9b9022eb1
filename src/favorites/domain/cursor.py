"""Opaque, tamper-evident keyset cursors.

A cursor is the position of the last item of a page (``created_at``, ``product_id``) bound to the
list's owner and signed with HMAC-SHA256, so a client can neither forge a position nor reuse one
user's cursor on another's list. Binary packing keeps it short (59 characters).
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


class CursorCodec:
    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, user_id: UUID, payload: bytes) -> bytes:
        return hmac.digest(self._key, user_id.bytes + payload, hashlib.sha256)[:_MAC_BYTES]

    def encode(self, user_id: UUID, created_at: datetime, product_id: UUID) -> str:
        micros = (created_at - _EPOCH) // timedelta(microseconds=1)
        payload = _LAYOUT.pack(micros, product_id.bytes)
        raw = payload + self._mac(user_id, payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, user_id: UUID, cursor: str) -> tuple[datetime, UUID]:
        if len(cursor) > 128:
            raise InvalidCursor("cursor is not one this service issued")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor("cursor is not one this service issued") from None
        if len(raw) != _LAYOUT.size + _MAC_BYTES:
            raise InvalidCursor("cursor is not one this service issued")
        payload, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not hmac.compare_digest(mac, self._mac(user_id, payload)):
            raise InvalidCursor("cursor is not one this service issued")
        micros, product = _LAYOUT.unpack(payload)
        return _EPOCH + timedelta(microseconds=micros), UUID(bytes=product)
