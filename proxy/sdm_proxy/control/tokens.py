"""API keys and session tokens.

API keys (``sdmk_<prefix>_<secret>``) are long-lived and shown once: the state keeps the public
prefix (to find the row) and a SHA-256 of the whole key (to check it). The keys are 256-bit random
values, so an unsalted fast hash is enough; what matters is that the state alone cannot log in.

Session tokens (``sdms.<payload>.<signature>``) are short-lived and signed with the control plane's
Ed25519 key. The payload names the session row, so a token is also revocable: verification checks
the signature and expiry first (cheap, no database) and then the row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuthenticationFailed, StateError
from ..home import write_private

API_KEY_PREFIX = "sdmk_"
SESSION_TOKEN_PREFIX = "sdms."
MAX_TOKEN_LENGTH = 1024  # anything longer is garbage; refuse before decoding


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    """Strict: the URL-safe alphabet without padding, in its one canonical spelling; else
    ``ValueError``. (``urlsafe_b64decode`` drops stray characters, so one token had countless
    spellings, each a miss in the verification cache and in anything keyed on the token.)"""
    data = base64.b64decode(text.encode("ascii") + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if b64e(data) != text:
        raise ValueError("not canonical base64")
    return data


# --- API keys -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewApiKey:
    prefix: str
    key_hash: str
    plain: str  # shown to the user once, never stored

    def __repr__(self) -> str:
        return f"NewApiKey(prefix={self.prefix!r})"


def new_api_key() -> NewApiKey:
    prefix = secrets.token_hex(4)
    plain = f"{API_KEY_PREFIX}{prefix}_{b64e(secrets.token_bytes(32))}"
    return NewApiKey(prefix=prefix, key_hash=hash_api_key(plain), plain=plain)


def hash_api_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def api_key_prefix(plain: str) -> str:
    """The lookup prefix of a key, or AuthenticationFailed when it is not shaped like one."""
    if isinstance(plain, str) and plain.startswith(SESSION_TOKEN_PREFIX):
        raise AuthenticationFailed("invalid API key: that is a session token; use an API key (sdmk_…)")
    if not isinstance(plain, str) or len(plain) > 128 or not plain.startswith(API_KEY_PREFIX):
        raise AuthenticationFailed("invalid API key")
    prefix, sep, _ = plain[len(API_KEY_PREFIX):].partition("_")
    if not sep or len(prefix) != 8:
        raise AuthenticationFailed("invalid API key")
    return prefix


def api_key_matches(plain: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(plain), key_hash)


# --- session tokens -------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenClaims:
    session_id: str
    user: str
    expires_at: datetime


class SessionSigner:
    """Signs and checks session tokens with the control plane's Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> "SessionSigner":
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            write_private(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            return cls(key)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> "SessionSigner":
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise StateError(f"session signing key {path} is missing or corrupt: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"session signing key {path} is not an Ed25519 key")
        return cls(key)

    def issue(self, session_id: str, user: str, expires_at: datetime) -> str:
        payload = json.dumps(
            {"sid": session_id, "u": user, "exp": int(expires_at.timestamp())},
            separators=(",", ":"), sort_keys=True,
        ).encode()
        return f"{SESSION_TOKEN_PREFIX}{b64e(payload)}.{b64e(self._private.sign(payload))}"

    def verify(self, token: str, now: datetime) -> TokenClaims:
        """Signature and expiry only; the caller still checks the session row (revocation)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.startswith(SESSION_TOKEN_PREFIX):
            raise AuthenticationFailed("invalid session token")
        try:
            payload_b64, sig_b64 = token[len(SESSION_TOKEN_PREFIX):].split(".")
            payload, signature = b64d(payload_b64), b64d(sig_b64)
            self.public_key.verify(signature, payload)
            claims = json.loads(payload)
            expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=timezone.utc)
            result = TokenClaims(session_id=str(claims["sid"]), user=str(claims["u"]), expires_at=expires_at)
        except (ValueError, KeyError, TypeError, InvalidSignature):
            raise AuthenticationFailed("invalid session token") from None
        if expires_at <= now:
            raise AuthenticationFailed("session token expired: create a new session")
        return result
