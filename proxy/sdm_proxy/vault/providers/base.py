"""The ``KeyProvider`` protocol: who makes and unwraps data keys.

A provider never sees a DB secret, only data keys. It returns the plaintext data key as a
``bytearray`` where it can, so the envelope layer can wipe it after use.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..envelope import EncryptionContext


@runtime_checkable
class KeyProvider(Protocol):
    #: Stored in each envelope; picks the provider that can open it ("local", "aws-kms").
    name: str

    def generate_data_key(self, ctx: EncryptionContext) -> tuple[bytes | bytearray, str, bytes]:
        """A fresh 256-bit data key: ``(plaintext_key, key_id, wrapped_key)``, wrapped for ``ctx``."""
        ...

    def decrypt_data_key(self, key_id: str, wrapped: bytes, ctx: EncryptionContext) -> bytes | bytearray:
        """Unwrap a data key made by ``generate_data_key`` for the same ``ctx``, or raise ``VaultError``."""
        ...
