"""The embedded key provider: master keys in a local JSON file (mode 0600).

File format (``$SDM_HOME/keys/master.keys`` by default)::

    {"v": 1, "keys": [{"id": "mk_...", "key": "<base64 of 32 bytes>", "created": "<ISO 8601 UTC>"}, ...]}

The FIRST key wraps new data keys; every listed key can unwrap (so rotation is: add a new key in
front, keep the old ones until every credential has been resealed). Wrapping is AES-256-GCM with the
encryption context as associated data, the same binding KMS gives, so a wrapped key moved to
another credential fails here too.

The file is re-read when it changes on disk, because admin commands (``sdm credential add`` after a
key rotation) run in other processes while a gateway is up.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import VaultError
from ...home import SdmHome, write_private
from .._codec import b64e
from ..envelope import DATA_KEY_BYTES, NONCE_BYTES, EncryptionContext, mismatch_error
from ..secret import SecretValue

LOCAL_PROVIDER_NAME = "local"
MASTER_KEY_BYTES = 32
KEY_FILE_VERSION = 1
MAX_KEY_FILE_BYTES = 1024 * 1024
_WRAPPED_LEN = NONCE_BYTES + DATA_KEY_BYTES + 16  # nonce || ciphertext || GCM tag


# the key file ------------------------------------------------------------------------------------
def _corrupt(path: Path, reason: str) -> VaultError:
    # ``reason`` is always one of our fixed phrases: never echo file content (it is key material).
    return VaultError(f"master key file {path} is corrupt: {reason}")


def _read_private_file(path: Path) -> tuple[bytes, tuple[int, int, int]]:
    """Read the key file after checking (on the open descriptor, so no swap in between) its mode."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise VaultError(
            f"master key file {path} is missing: create it with `sdm init`, restore it from backup, "
            "or point the local key provider's path at it"
        ) from None
    except OSError as exc:
        raise VaultError(f"master key file {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VaultError(f"master key file {path} is not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise VaultError(
                f"master key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it: run `chmod 600 {path}`"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise _corrupt(path, "too large")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks), (st.st_ino, st.st_mtime_ns, st.st_size)
    finally:
        os.close(fd)


def _parse_key_file(path: Path, raw: bytes) -> list[tuple[str, SecretValue, str]]:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None  # the decode error is dropped on purpose: its .doc attribute is the whole file
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise _corrupt(path, 'expected a JSON object with a "keys" list')
    if body.get("v") != KEY_FILE_VERSION:
        raise _corrupt(path, f"unsupported format version (this gateway reads v{KEY_FILE_VERSION})")
    if not body["keys"]:
        raise _corrupt(path, "it lists no keys")
    keys: list[tuple[str, SecretValue, str]] = []
    seen: set[str] = set()
    for n, entry in enumerate(body["keys"], 1):
        if not isinstance(entry, dict):
            raise _corrupt(path, f"key #{n} is not an object")
        key_id, key_b64, created = entry.get("id"), entry.get("key"), entry.get("created", "")
        if not isinstance(key_id, str) or not key_id:
            raise _corrupt(path, f"key #{n} has no id")
        if key_id in seen:
            raise _corrupt(path, f"key id {key_id!r} is listed twice")
        seen.add(key_id)
        material = _decode_key(key_b64)
        if material is None:
            raise _corrupt(path, f"key {key_id!r} is not base64 of {MASTER_KEY_BYTES} bytes")
        keys.append((key_id, SecretValue(material), created if isinstance(created, str) else ""))
    return keys


def _decode_key(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        material = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return material if len(material) == MASTER_KEY_BYTES else None


def _new_entry() -> dict[str, str]:
    return {
        "id": "mk_" + secrets.token_hex(8),
        "key": b64e(AESGCM.generate_key(bit_length=256)),
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


def _write_key_file(path: Path, entries: list[dict[str, str]]) -> None:
    data = json.dumps({"v": KEY_FILE_VERSION, "keys": entries}, indent=2) + "\n"
    write_private(Path(path), data.encode("ascii"))


def create_master_key_file(path: str | os.PathLike) -> str:
    """Create a new key file holding one fresh master key; returns its id. Never overwrites."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        # Overwriting would make every secret sealed under the old key unreadable, for good.
        raise VaultError(f"master key file {path} already exists; use add_master_key() to rotate")
    entry = _new_entry()
    _write_key_file(path, [entry])
    return entry["id"]


def add_master_key(path: str | os.PathLike) -> str:
    """Put a fresh master key first (it wraps from now on); keep the old ones for unwrapping."""
    path = Path(path)
    raw, _ = _read_private_file(path)
    old = _parse_key_file(path, raw)
    entry = _new_entry()
    entries = [entry] + [{"id": i, "key": b64e(k.reveal()), "created": c} for i, k, c in old]
    _write_key_file(path, entries)
    return entry["id"]


# the provider ------------------------------------------------------------------------------------
class LocalKeyProvider:
    """Wraps data keys with the first master key of a local key file; unwraps with any listed key."""

    name = LOCAL_PROVIDER_NAME

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        # One tuple swapped atomically: (ids newest first, id -> key). SecretValue, so even
        # vars(provider) or a debugger's locals view shows no key material.
        self._state: tuple[list[str], dict[str, SecretValue]] = ([], {})
        self._current()  # fail at start-up, not at the first unlock

    @classmethod
    def from_home(cls, home: SdmHome) -> "LocalKeyProvider":
        return cls(home.master_key_path)

    def _current(self) -> tuple[list[str], dict[str, SecretValue]]:
        """The keys as on disk now: one stat per use, a re-read only when the file changed."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                st = None  # _read_private_file gives the precise error
            # chmod does not touch mtime, so the mode is checked on every use, not only on reload.
            fresh = (
                st is not None
                and not (os.name == "posix" and st.st_mode & 0o077)
                and (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp
            )
            if not fresh:
                raw, stamp = _read_private_file(self.path)
                entries = _parse_key_file(self.path, raw)
                self._state = ([i for i, _, _ in entries], {i: k for i, k, _ in entries})
                self._stamp = stamp
            return self._state

    @property
    def key_ids(self) -> list[str]:
        """Master key ids, newest (the one that wraps) first."""
        return list(self._current()[0])

    @property
    def current_key_id(self) -> str:
        return self._current()[0][0]

    def generate_data_key(self, ctx: EncryptionContext) -> tuple[bytearray, str, bytes]:
        order, keys = self._current()
        key_id = order[0]
        data_key = bytearray(AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + AESGCM(keys[key_id].reveal()).encrypt(nonce, data_key, ctx.aad())
        return data_key, key_id, wrapped

    def decrypt_data_key(self, key_id: str, wrapped: bytes, ctx: EncryptionContext) -> bytearray:
        _, keys = self._current()
        master = keys.get(key_id)
        if master is None:
            raise VaultError(
                f"sealed secret for {ctx.describe()} was wrapped by master key {key_id[:64]!r}, "
                f"which is not in {self.path} (removed after a rotation, or a key file from another install?)"
            )
        if len(wrapped) != _WRAPPED_LEN:
            raise mismatch_error(ctx)
        try:
            data_key = AESGCM(master.reveal()).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ctx.aad())
        except InvalidTag:
            data_key = None
        if data_key is None:  # raised outside the except block: no cryptography context attached
            raise mismatch_error(ctx)
        return bytearray(data_key)

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self.path)!r}, keys={self._state[0]!r})"

    def __reduce_ex__(self, protocol: object):
        raise TypeError("LocalKeyProvider holds master keys and cannot be pickled")
