"""Enrolled proxy instances: the public keys whose signatures may ask for an unlock."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from ..audit.events import admin_event
from ..errors import AccessDenied, NotFound, ProxyRejected, UsageError
from ..unlock.message import proxy_id_for
from .context import Actor, ControlPlane
from .models import ProxyInstance
from .policy import proxy_decision
from .unlock_facts import proxy_key


def enroll_proxy(cp: ControlPlane, actor: Actor, public_key: bytes) -> dict:
    actor.require_admin("enrolling a proxy")
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise UsageError("not an Ed25519 public key (expected 32 raw bytes)") from None
    proxy_id = proxy_id_for(public_key)
    with cp.db.transaction() as s:
        row = s.get(ProxyInstance, proxy_id)
        if row is not None and row.revoked_at is None:
            return proxy_view(row)
        if row is not None:  # a revoked key stays revoked: enrol a new key instead
            raise AccessDenied(f"proxy {proxy_id} was revoked; give it a new key to enrol again "
                               "(for `sdm gateway`: delete $SDM_HOME/keys/proxy.pem)")
        row = ProxyInstance(id=proxy_id, public_key=public_key, enrolled_by=actor.name, enrolled_at=cp.now())
        s.add(row)
        cp.record(s, admin_event(actor.name, "proxy.enroll", target=proxy_id))
        return proxy_view(row)


def revoke_proxy(cp: ControlPlane, actor: Actor, proxy_id: str) -> dict:
    actor.require_admin("revoking a proxy")
    with cp.db.transaction() as s:
        row = s.get(ProxyInstance, proxy_id)
        if row is None:
            raise NotFound(f"no proxy {proxy_id!r} (see `sdm proxy list`)")
        if row.revoked_at is None:
            row.revoked_at = cp.now()
            cp.record(s, admin_event(actor.name, "proxy.revoke", target=proxy_id))
        return proxy_view(row)


def list_proxies(cp: ControlPlane, actor: Actor) -> list[dict]:
    actor.require_admin("listing proxies")
    with cp.db.transaction() as s:
        return [proxy_view(p) for p in s.scalars(select(ProxyInstance).order_by(ProxyInstance.enrolled_at))]


def proxy_view(p: ProxyInstance) -> dict:
    return {"id": p.id, "enrolled_at": p.enrolled_at.isoformat(), "enrolled_by": p.enrolled_by,
            "state": "revoked" if p.revoked_at else "active"}


def verify_proxy_signature(s: DBSession, proxy_id: str, signature: bytes, signed_bytes: bytes) -> None:
    """The proxy half of every proxy-to-control-plane call: enrolled, not revoked, signature valid."""
    proxy = proxy_key(s.connection(), proxy_id)  # read live every time: a revocation counts at once
    decision = proxy_decision(proxy is not None, proxy.revoked_at if proxy else None)
    if not decision.allowed:
        raise ProxyRejected(decision.reason)
    try:
        _public_key(proxy.public_key).verify(signature, signed_bytes)
    except InvalidSignature:
        raise ProxyRejected("request signature does not match the enrolled proxy key") from None


_KEY_CACHE_SIZE = 256
_keys: dict[bytes, Ed25519PublicKey] = {}


def _public_key(raw: bytes) -> Ed25519PublicKey:
    """The parsed key object, kept per key bytes (only parsing is saved: the row, and so the
    revocation, is still read on every call)."""
    raw = bytes(raw)
    key = _keys.get(raw)
    if key is None:
        if len(_keys) >= _KEY_CACHE_SIZE:
            _keys.clear()
        key = _keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
    return key
