"""Sealing an unlocked secret to the proxy instance that asked for it (the dual-key unlock response).

The proxy sends a fresh X25519 public key with each signed unlock request; the vault answers with
the secret encrypted to that key (ephemeral-ephemeral ECDH, HKDF-SHA256, AES-256-GCM). Why: the
secret is never in clear on the wire or in any HTTP log/middleware between vault and proxy, and a
recorded response is useless without the proxy's per-request private key.

``info`` binds the response to its request (pass the request nonce or a hash of the signed
request): it goes into both the HKDF info and the AEAD associated data, so a response replayed to
another request fails to open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import UsageError, VaultError
from ._codec import b64d, b64e, wipe
from .secret import SecretValue

_LABEL = b"sdm-unlock-v1\x00"  # domain separation: these keys are for nothing else
_FIELDS = frozenset({"epk", "nonce", "ciphertext"})
_WHAT = "sealed unlock response"
NONCE_BYTES = 12


def generate_proxy_ephemeral_key() -> tuple[X25519PrivateKey, bytes]:
    """A fresh per-request key pair for the proxy: (private key, raw 32-byte public key to send)."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def _check_info(info: bytes) -> bytes:
    if not isinstance(info, (bytes, bytearray)) or not info:
        raise UsageError("info must be non-empty bytes that bind the request (e.g. the request nonce)")
    return bytes(info)


def _derive_key(shared: bytes, epk: bytes, proxy_pub: bytes, info: bytes) -> bytearray:
    # Salt = both public keys, so the key is bound to this exact exchange (as in HPKE/ECIES).
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=epk + proxy_pub, info=_LABEL + info)
    return bytearray(hkdf.derive(shared))


def _exchange(private: X25519PrivateKey, peer_raw: bytes, what: str) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(peer_raw)
    except ValueError:
        peer = None
    if peer is None:
        raise VaultError(f"{what} is not a 32-byte X25519 public key")
    try:
        return private.exchange(peer)
    except ValueError:
        pass  # all-zero shared secret: a low-order point, i.e. a forged key
    raise VaultError(f"{what} is not a usable X25519 public key")


def seal_to_proxy(secret: SecretValue, proxy_ephemeral_pub: bytes, info: bytes) -> dict[str, str]:
    """Encrypt ``secret`` so only the holder of ``proxy_ephemeral_pub``'s private key can read it."""
    if not isinstance(secret, SecretValue):
        raise TypeError("seal_to_proxy() takes a SecretValue")
    if not isinstance(proxy_ephemeral_pub, (bytes, bytearray)):
        raise VaultError("proxy ephemeral public key must be raw bytes")
    info = _check_info(info)
    proxy_pub = bytes(proxy_ephemeral_pub)
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    shared = _exchange(ephemeral, proxy_pub, "proxy ephemeral public key")
    key = _derive_key(shared, epk, proxy_pub, info)
    try:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(key).encrypt(nonce, secret.reveal(), info)
    finally:
        wipe(key)
    return {"epk": b64e(epk), "nonce": b64e(nonce), "ciphertext": b64e(ciphertext)}


def open_from_gateway(
    sealed: Mapping[str, object], proxy_ephemeral_private: X25519PrivateKey, info: bytes
) -> SecretValue:
    """Open a ``seal_to_proxy`` result with the proxy's per-request private key and the same ``info``."""
    if not isinstance(proxy_ephemeral_private, X25519PrivateKey):
        raise TypeError("open_from_gateway() takes the proxy's X25519PrivateKey")
    info = _check_info(info)
    if not isinstance(sealed, Mapping) or set(sealed) != _FIELDS:
        raise VaultError(f"{_WHAT} is malformed: expected exactly the fields epk, nonce, ciphertext")
    epk = b64d(sealed["epk"], "epk", _WHAT)
    nonce = b64d(sealed["nonce"], "nonce", _WHAT)
    ciphertext = b64d(sealed["ciphertext"], "ciphertext", _WHAT)
    if len(nonce) != NONCE_BYTES or len(ciphertext) < 16:
        raise VaultError(f"{_WHAT} is malformed: bad nonce or ciphertext length")
    shared = _exchange(proxy_ephemeral_private, epk, f"{_WHAT}'s epk")
    proxy_pub = proxy_ephemeral_private.public_key().public_bytes_raw()
    key = _derive_key(shared, epk, proxy_pub, info)
    plaintext = None
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, info)
    except InvalidTag:
        pass
    finally:
        wipe(key)
    if plaintext is None:  # raised outside the except block: no cryptography context attached
        raise VaultError(
            f"{_WHAT} could not be opened: wrong proxy key, a response to another request, or tampered"
        )
    return SecretValue(plaintext)
