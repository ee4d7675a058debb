"""Signed checkpoints: an Ed25519 signature over ``f"{seq}:{hash}"`` of the chain at some point.

The chain alone proves the log is self-consistent; it does not stop someone with write access to the
state database from rewriting every event after position k and recomputing all hashes. A checkpoint
pins (seq, hash) with a key that lives in ``$SDM_HOME/keys/audit-signing.pem``, so such a rewrite
shows up as a checkpoint that no longer matches its event (and a new, forged checkpoint needs the key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import StateError
from ..home import write_private
from .chain import checkpoint_message
from .events import CHECKPOINT, canonical_json, now_ts

PublicKeyLike = Union[Ed25519PublicKey, bytes, str, Path]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    ts: str
    signature: str  # hex, 128 characters

    def to_dict(self) -> dict[str, Any]:
        return {"type": CHECKPOINT, "seq": self.seq, "hash": self.hash, "ts": self.ts, "signature": self.signature}

    def to_line(self) -> str:
        """The JSON-lines form (no trailing newline)."""
        return canonical_json(self.to_dict())


class CheckpointSigner:
    """Holds the audit signing key. ``load_or_create`` keeps it in a 0600 PEM file (PKCS#8)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()

    def __repr__(self) -> str:  # never show key material
        return f"CheckpointSigner(public_key={self.public_key_bytes().hex()[:16]}...)"

    @classmethod
    def generate(cls) -> "CheckpointSigner":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> "CheckpointSigner":
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise StateError(f"audit signing key {path} is unreadable or corrupt: {type(exc).__name__}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"audit signing key {path} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> "CheckpointSigner":
        path = Path(path)
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_private(path, pem)
        # Read back what is on disk: if two processes created the key at once, both use the winner.
        return cls.load(path)

    def public_key_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, seq: int, hash_: str) -> str:
        return self._key.sign(checkpoint_message(seq, hash_)).hex()

    def checkpoint(self, seq: int, hash_: str) -> Checkpoint:
        return Checkpoint(seq=seq, hash=hash_, ts=now_ts(), signature=self.sign(seq, hash_))


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """Accept a key object, 32 raw bytes, PEM (bytes or str), or a path to a PEM file.

    A path to the *private* key file also works (its public half is used).
    """
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Path):
        key = key.read_bytes()
    if isinstance(key, str):
        key = key.encode("ascii")
    if len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(key)
    if b"PRIVATE KEY" in key:
        priv = serialization.load_pem_private_key(key, password=None)
        if isinstance(priv, Ed25519PrivateKey):
            return priv.public_key()
        raise ValueError("not an Ed25519 key")
    pub = serialization.load_pem_public_key(key)
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return pub


def signature_valid(public_key: Ed25519PublicKey, seq: int, hash_: str, signature_hex: str) -> bool:
    try:
        public_key.verify(bytes.fromhex(signature_hex), checkpoint_message(seq, hash_))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
