"""The signed unlock request shared by the proxy (signs) and the control plane (checks).

A request binds together everything the control plane must check: which session, which
credential, which proxy, when, a one-time nonce, and the proxy's ephemeral X25519 key that the
answer is sealed to. The signature covers the canonical JSON of all of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from ..errors import ProxyRejected

MAX_FIELD = 1024
MAX_NONCE = 64


def proxy_id_for(public_key: bytes) -> str:
    """A stable, readable id derived from the proxy's public key (re-enrolling is idempotent)."""
    return "px-" + hashlib.sha256(public_key).hexdigest()[:16]


def unlock_info(request: "UnlockRequest") -> bytes:
    """HKDF info that binds a sealed answer to the one request it answers."""
    return f"sdm-unlock:{request.proxy_id}:{request.nonce}".encode()


_ANSWER_FIELDS = ("user", "session_id", "credential", "db_user", "version", "via", "access_expires_at")
_DATASOURCE_FIELDS = ("name", "type", "host", "port", "database", "tls", "ca_file")


def answer_info(request: "UnlockRequest", answer: dict) -> bytes:
    """What a sealed answer is bound to: the request it answers and every field of the answer the
    proxy acts on (where it logs in, with which TLS, as whom, for which session, until when).

    A proxy that runs apart from the control plane reads the answer off the network: if any of
    these was changed on the way (a datasource's host pointed elsewhere, say), the secret does
    not open, so it never goes to a place the control plane did not name."""
    ds = answer.get("datasource")
    ds = ds if isinstance(ds, dict) else {}
    bound = {name: answer.get(name) for name in _ANSWER_FIELDS}
    bound["datasource"] = {name: ds.get(name) for name in _DATASOURCE_FIELDS}
    return unlock_info(request) + b"\n" + canonical(bound)


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class UnlockRequest:
    session_token: str
    datasource: str
    credential: str | None  # None: "the one credential I hold on this datasource"
    nonce: str
    timestamp: str  # ISO-8601 UTC
    proxy_id: str
    ephemeral_public_key: str  # base64 of 32 raw X25519 bytes
    protocol: str | None = None
    client_addr: str | None = None
    v: int = 1

    def __repr__(self) -> str:  # the session token is a bearer credential: keep it out of logs
        return f"UnlockRequest({self.datasource}/{self.credential}, proxy={self.proxy_id})"

    @classmethod
    def new(cls, *, session_token: str, datasource: str, credential: str | None, proxy_id: str,
            ephemeral_public_key: bytes, now: datetime, protocol: str | None = None,
            client_addr: str | None = None) -> "UnlockRequest":
        return cls(
            session_token=session_token, datasource=datasource, credential=credential,
            nonce=secrets.token_hex(16), timestamp=now.astimezone(timezone.utc).isoformat(),
            proxy_id=proxy_id, ephemeral_public_key=base64.b64encode(ephemeral_public_key).decode(),
            protocol=protocol, client_addr=client_addr,
        )

    def as_dict(self) -> dict:
        """The fields by name: ``dataclasses.asdict`` without its deep copy (every connect signs one)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def signed_bytes(self) -> bytes:
        return canonical(self.as_dict())

    def issued_at(self) -> datetime:
        try:
            ts = datetime.fromisoformat(self.timestamp)
        except ValueError:
            raise ProxyRejected("malformed unlock request: bad timestamp") from None
        if ts.tzinfo is None:
            raise ProxyRejected("malformed unlock request: timestamp without timezone")
        return ts

    def ephemeral_key_bytes(self) -> bytes:
        try:
            raw = base64.b64decode(self.ephemeral_public_key, validate=True)
        except ValueError:
            raise ProxyRejected("malformed unlock request: bad ephemeral key") from None
        if len(raw) != 32:
            raise ProxyRejected("malformed unlock request: bad ephemeral key")
        return raw


_FIELD_NAMES = tuple(f.name for f in fields(UnlockRequest))
_REQUIRED_STR = ("session_token", "datasource", "nonce", "timestamp", "proxy_id", "ephemeral_public_key")
_OPTIONAL_STR = ("credential", "protocol", "client_addr")


def parse_signed_request(body: object) -> tuple[UnlockRequest, bytes]:
    """``{"request": {...}, "signature": b64}`` → (request, signature); ProxyRejected if malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise ProxyRejected("malformed unlock request")
    raw, signature_b64 = body["request"], body.get("signature")
    if not isinstance(signature_b64, str) or len(signature_b64) > 200:
        raise ProxyRejected("malformed unlock request: missing signature")
    if set(raw) - set(_REQUIRED_STR) - set(_OPTIONAL_STR) - {"v"} or raw.get("v") != 1:
        raise ProxyRejected("malformed unlock request: unknown fields or version")
    for name in _REQUIRED_STR:
        if not isinstance(raw.get(name), str) or not 0 < len(raw[name]) <= MAX_FIELD:
            raise ProxyRejected(f"malformed unlock request: bad {name}")
    if len(raw["nonce"]) > MAX_NONCE:  # the state keeps nonces in a 64-character column
        raise ProxyRejected("malformed unlock request: bad nonce")
    for name in _OPTIONAL_STR:
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_FIELD):
            raise ProxyRejected(f"malformed unlock request: bad {name}")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise ProxyRejected("malformed unlock request: bad signature encoding") from None
    return UnlockRequest(**{k: raw.get(k) for k in _REQUIRED_STR + _OPTIONAL_STR}), signature


def sign_request(request: UnlockRequest, private_key) -> dict:
    signature = private_key.sign(request.signed_bytes())
    return {"request": request.as_dict(), "signature": base64.b64encode(signature).decode()}
