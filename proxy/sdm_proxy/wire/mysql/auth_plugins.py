"""The auth plugins' math: the two scrambles and the RSA-encrypted password. Pure functions, no state.

``mysql_native_password`` (SHA-1), the ``caching_sha2_password`` fast path (SHA-256), and the
RSA-OAEP encryption both SHA-2 plugins use for full auth over plain TCP. Apart from the exchange
(``auth_exchange``) so each algorithm can be read and tested on its own, and so the
``cryptography`` import lives in one place.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import ServerProtocolError, UpstreamLoginError


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_password_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty password -> empty response."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(nonce[:20] + stage2).digest())


def caching_sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce): the fast-auth reply."""
    if not password:
        return b""
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:20]).digest())


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """RSA-OAEP(SHA-1) of (password + NUL) XOR nonce (repeated), as both SHA-2 plugins expect."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError):
        raise ServerProtocolError("upstream sent an unreadable RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ServerProtocolError("upstream's public key is not an RSA key")
    if not nonce:
        raise ServerProtocolError("upstream sent an empty nonce")
    data = password + b"\0"
    masked = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))
    try:
        return key.encrypt(masked, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    except ValueError:  # message too long for the key: the password itself must not show up
        raise UpstreamLoginError("the credential's password is too long for the upstream's RSA key; "
                                 "use TLS to the datasource") from None
