"""Strict base64 helpers shared by the envelope and transport formats.

Why strict: a lenient decoder accepts several spellings of one ciphertext, which makes "the field
was edited" harder to see and lets junk through to the AEAD layer. Errors name the field, never
its content.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import VaultError


def b64e(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def b64d(value: object, field: str, what: str) -> bytes:
    """Decode a standard, padded base64 string or raise ``VaultError`` naming ``field`` of ``what``."""
    if not isinstance(value, str):
        raise VaultError(f"{what} is malformed: field {field!r} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        pass
    # Raised outside the except block so no decoder exception rides along as __context__.
    raise VaultError(f"{what} is malformed: field {field!r} is not valid base64")


def wipe(buf: bytearray) -> None:
    """Zero a buffer we own. Best effort: Python may hold other copies (bytes can't be wiped)."""
    buf[:] = bytes(len(buf))
