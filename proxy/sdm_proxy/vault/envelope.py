"""Envelope encryption of one credential secret.

Each secret gets its own fresh 256-bit data key; the secret is sealed with AES-256-GCM under that
key, and the data key itself is wrapped by a key provider (local master key file or AWS KMS). The
envelope stored in the ``credentials.sealed`` column holds only the wrapped key and ciphertext.

The associated data of both AEAD layers is the encryption context ``{datasource, credential,
version, destination}``: an envelope copied to another row (or kept across a version bump) fails
to open, instead of silently logging in to the wrong database with the wrong password. The
destination (database type, host, port, database name, TLS mode, CA file, login name) is bound
too, since envelope version 2: someone who can write the state database but holds no key cannot
point a credential at a host of theirs and receive its password at the next login. Version 1
envelopes (sealed before) open without it, until the installation refuses them
(``min_envelope_version`` in config.json, passed to ``open_`` as ``min_version``), which `sdm
master-key rotate --reseal` sets once it has sealed every secret again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import UsageError, VaultError
from ._codec import b64d, b64e, wipe
from .secret import SecretValue

if TYPE_CHECKING:
    from .providers.base import KeyProvider

ENVELOPE_VERSION = 2  # binds the destination; 1: names only (still opened)
LEGACY_VERSION = 1
DATA_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the 96-bit nonce GCM is designed for
TAG_BYTES = 16
MAX_ENVELOPE_CHARS = 64 * 1024  # a DB secret is small; refuse to parse megabytes of junk
_FIELDS = frozenset({"v", "provider", "key_id", "wrapped_key", "nonce", "ciphertext"})
_WHAT = "sealed secret envelope"


class SealedSecretMismatch(VaultError):
    """An AEAD check failed: the envelope was moved, edited, or sealed under another key."""


@dataclass(frozen=True)
class EncryptionContext:
    """Which row a sealed secret belongs to; bound into every AEAD tag and into KMS calls."""

    datasource: str
    credential: str
    version: int
    destination: str | None = None  # ``destination_text(...)`` of where the secret is sent
    purpose: str | None = None  # None: the secret itself; "reference": a secret reference's binding

    def __post_init__(self) -> None:
        for field in ("datasource", "credential"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise UsageError(f"encryption context needs a non-empty {field} name")
        if self.destination is not None and (not isinstance(self.destination, str) or not self.destination):
            raise UsageError("encryption context: destination must be a non-empty string")
        # bool is an int subclass; True as a version is always a bug.
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise UsageError("encryption context needs a credential version >= 1")

    def as_dict(self) -> dict[str, str]:
        # KMS encryption context values must be strings, so the version is one here too.
        d = {"datasource": self.datasource, "credential": self.credential, "version": str(self.version)}
        if self.destination is not None:
            d["destination"] = self.destination
        if self.purpose is not None:  # so that neither envelope can stand in for the other
            d["purpose"] = self.purpose
        return d

    def aad(self) -> bytes:
        # Canonical: sorted keys, no whitespace, ASCII-only, so every process builds the same bytes.
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
            "ascii"
        )

    def describe(self) -> str:
        return f"{self.datasource}/{self.credential}/v{self.version}"


def destination_text(*, type: str, host: str, port: int, database: str | None, tls: str,
                     ca_file: str | None, db_user: str) -> str:
    """Where a credential's secret goes, as one canonical string for the encryption context."""
    return json.dumps({"type": type, "host": host, "port": port, "database": database, "tls": tls,
                       "ca_file": ca_file, "db_user": db_user}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)


def mismatch_error(ctx: EncryptionContext) -> SealedSecretMismatch:
    return SealedSecretMismatch(
        f"sealed secret does not match its credential (datasource/credential/version) {ctx.describe()}: "
        "it was moved from another credential, edited, its datasource's address or TLS settings or its "
        "login name were changed in the state database, or it was sealed under a key this gateway does "
        "not hold"
    )


@dataclass(frozen=True)
class Envelope:
    """The parsed, public part of an envelope (all ciphertext; safe to inspect, e.g. for rotation)."""

    provider: str
    key_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes
    version: int = ENVELOPE_VERSION

    def __repr__(self) -> str:  # ciphertext is not secret, but it is noise in logs
        return f"Envelope(provider={self.provider!r}, key_id={self.key_id!r})"


ProviderSet = Union["KeyProvider", Mapping[str, "KeyProvider"], Iterable["KeyProvider"]]


def _owned_key(key: bytes | bytearray) -> bytearray:
    if not isinstance(key, (bytes, bytearray)) or len(key) != DATA_KEY_BYTES:
        if isinstance(key, bytearray):
            wipe(key)
        raise VaultError("key provider returned a data key that is not 256 bits")
    return key if isinstance(key, bytearray) else bytearray(key)


def seal(provider: "KeyProvider", secret: SecretValue, ctx: EncryptionContext) -> str:
    """Seal ``secret`` for the credential named by ``ctx``; returns the envelope JSON string."""
    if not isinstance(secret, SecretValue):
        raise TypeError("seal() takes a SecretValue, so the plain secret never travels as bare bytes/str")
    if not isinstance(ctx, EncryptionContext):
        raise TypeError("seal() takes an EncryptionContext")
    plaintext_key, key_id, wrapped = provider.generate_data_key(ctx)
    key = _owned_key(plaintext_key)
    try:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(key).encrypt(nonce, secret.reveal(), ctx.aad())
    finally:
        wipe(key)
    body = {
        "v": ENVELOPE_VERSION if ctx.destination is not None else LEGACY_VERSION,
        "provider": provider.name,
        "key_id": key_id,
        "wrapped_key": b64e(wrapped),
        "nonce": b64e(nonce),
        "ciphertext": b64e(ciphertext),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def parse_envelope(envelope: str) -> Envelope:
    """Check the envelope's shape without opening it. Raises ``VaultError`` if it is malformed."""
    if not isinstance(envelope, str):
        raise VaultError(f"{_WHAT} must be a JSON string")
    if len(envelope) > MAX_ENVELOPE_CHARS:
        raise VaultError(f"{_WHAT} is malformed: too large")
    try:
        body: Any = json.loads(envelope)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise VaultError(f"{_WHAT} is malformed: not a JSON object")
    missing = sorted(_FIELDS - body.keys())
    extra = sorted(body.keys() - _FIELDS)
    if missing or extra:
        extra = [str(name)[:32] for name in extra[:5]]  # names come from the stored text: keep them short
        raise VaultError(f"{_WHAT} is malformed: missing fields {missing}, unexpected fields {extra}")
    if body["v"] not in (LEGACY_VERSION, ENVELOPE_VERSION) or isinstance(body["v"], bool):
        raise VaultError(f"{_WHAT} has unsupported version {str(body['v'])[:16]!r} (this gateway reads v1 and v2)")
    for field in ("provider", "key_id"):
        if not isinstance(body[field], str) or not body[field]:
            raise VaultError(f"{_WHAT} is malformed: field {field!r} must be a non-empty string")
    nonce = b64d(body["nonce"], "nonce", _WHAT)
    if len(nonce) != NONCE_BYTES:
        raise VaultError(f"{_WHAT} is malformed: nonce must be {NONCE_BYTES} bytes")
    ciphertext = b64d(body["ciphertext"], "ciphertext", _WHAT)
    if len(ciphertext) < TAG_BYTES:
        raise VaultError(f"{_WHAT} is malformed: ciphertext is shorter than its tag")
    wrapped = b64d(body["wrapped_key"], "wrapped_key", _WHAT)
    if not wrapped:
        raise VaultError(f"{_WHAT} is malformed: wrapped_key is empty")
    return Envelope(body["provider"], body["key_id"], wrapped, nonce, ciphertext, body["v"])


def _by_name(providers: ProviderSet) -> Mapping[str, "KeyProvider"]:
    if isinstance(providers, Mapping):
        return providers
    if hasattr(providers, "decrypt_data_key"):  # a single provider
        return {providers.name: providers}  # type: ignore[union-attr]
    return {p.name: p for p in providers}  # type: ignore[union-attr]


def open_(providers: ProviderSet, envelope: str, ctx: EncryptionContext, *,
          min_version: int = LEGACY_VERSION) -> SecretValue:
    """Open an envelope sealed for ``ctx``. ``providers``: one provider, a list, or a name → provider map.

    ``min_version``: refuse older envelopes. Once every secret is sealed as version 2 (which binds
    the destination), a version 1 envelope put back into the state database from an old copy would
    open without that binding; the installation's config says it may not (``min_envelope_version``)."""
    if not isinstance(ctx, EncryptionContext):
        raise TypeError("open_() takes an EncryptionContext")
    env = parse_envelope(envelope)
    if env.version < min_version:
        raise SealedSecretMismatch(
            f"sealed secret for {ctx.describe()} is envelope version {env.version}, which this installation "
            f"no longer opens (min_envelope_version {min_version} in config.json): it was put back from an "
            "old copy, or was never sealed again; set its password anew with `sdm credential rotate`")
    if env.version == LEGACY_VERSION:
        ctx = dataclasses.replace(ctx, destination=None)  # sealed before destinations were bound
    elif ctx.destination is None:
        raise mismatch_error(ctx)  # a version 2 envelope names a destination this context lacks
    provider = _by_name(providers).get(env.provider)
    if provider is None:
        raise VaultError(
            f"sealed secret for {ctx.describe()} was sealed by key provider {env.provider[:32]!r}, "
            "which this gateway is not configured with (list it under \"previous\" in the key provider config)"
        )
    plaintext_key = provider.decrypt_data_key(env.key_id, env.wrapped_key, ctx)
    key = _owned_key(plaintext_key)
    failed = False
    try:
        try:
            plaintext = AESGCM(key).decrypt(env.nonce, env.ciphertext, ctx.aad())
        except InvalidTag:
            failed = True
    finally:
        wipe(key)
    if failed:  # raised here so no cryptography exception hangs off it as __context__
        raise mismatch_error(ctx)
    return SecretValue(plaintext)


def reseal(
    providers: ProviderSet,
    new_provider: "KeyProvider",
    envelope: str,
    ctx: EncryptionContext,
    new_ctx: EncryptionContext | None = None,
    *,
    min_version: int = LEGACY_VERSION,
) -> str:
    """Open and seal again: moves a secret to a new master key / provider, or to a renamed row."""
    secret = open_(providers, envelope, ctx, min_version=min_version)
    return seal(new_provider, secret, new_ctx or ctx)
