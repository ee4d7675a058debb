"""User sessions: short-lived, signed, revocable tokens that the kernel holds instead of passwords."""

from __future__ import annotations

import hashlib
import secrets
import weakref
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from ..audit.events import admin_event, session_event
from ..errors import AuthenticationFailed, NotFound, UsageError
from .context import Actor, ControlPlane
from .models import Session, User
from .policy import SessionFacts, session_decision
from .tokens import MAX_TOKEN_LENGTH, SessionSigner, TokenClaims
from .unlock_facts import session_row

DEFAULT_SESSION_TTL = timedelta(hours=1)
MAX_SESSION_TTL = timedelta(hours=24)
# A session vouched for by a JupyterHub token is tied to nothing the hub can take back (revoking
# the hub token or the hub user does not end it): it is kept short, as a kernel renews anyway.
MAX_HUB_SESSION_TTL = timedelta(hours=1)


def create_session(cp: ControlPlane, actor: Actor, ttl: timedelta = DEFAULT_SESSION_TTL,
                   addr: str | None = None, *, label: str | None = None, via: str | None = None) -> dict:
    """Returns the token once; the state keeps only the session row. ``via`` names what vouched for
    the caller when it was not an sdm API key (``jupyterhub``); the session.start event says so."""
    if ttl > MAX_SESSION_TTL:
        raise UsageError(f"session TTL at most {int(MAX_SESSION_TTL.total_seconds() // 3600)}h")
    if via == "jupyterhub" and ttl > MAX_HUB_SESSION_TTL:
        raise UsageError("a session opened with a JupyterHub token lasts at most 1h (renew it instead: "
                         "revoking the hub token does not end it)")
    now = cp.now()
    with cp.db.transaction() as s:
        session = Session(id=secrets.token_hex(12), user_id=actor.user_id, created_at=now,
                          expires_at=now + ttl, client=(label or "")[:255] or None, api_key_id=actor.api_key_id)
        s.add(session)
        s.flush()
        cp.record(s, session_event("start", user=actor.name, session_id=session.id, client={"addr": addr},
                                details={k: v for k, v in (("label", label), ("via", via)) if v} or None))
    token = cp.session_signer.issue(session.id, actor.name, session.expires_at)
    return {"id": session.id, "user": actor.name, "expires_at": session.expires_at.isoformat(), "token": token}


_NO_SESSION = SessionFacts(False, None, None, None)


def session_facts(s: DBSession, session_id: str) -> SessionFacts:
    row = session_row(s.connection(), session_id)
    return row.facts() if row is not None else _NO_SESSION


def authenticate_session(cp: ControlPlane, s: DBSession, token: str, now: datetime) -> Actor:
    """Signature, expiry, then the row (revocation). Raises AuthenticationFailed with the reason."""
    claims = _verify_token(cp.session_signer, token, now)
    row = session_row(s.connection(), claims.session_id)  # one read: the session and its user
    decision = session_decision(row.facts() if row is not None else _NO_SESSION, claims.user, now)
    if not decision.allowed:
        raise AuthenticationFailed(decision.reason)
    return Actor(user_id=row.user_id, name=row.user, is_admin=row.is_admin, session_id=claims.session_id)


_VERIFIED_MAX = 1024
_verified: "weakref.WeakKeyDictionary[SessionSigner, dict[bytes, TokenClaims]]" = weakref.WeakKeyDictionary()


def _verify_token(signer: SessionSigner, token: str, now: datetime) -> TokenClaims:
    """``signer.verify``, minus re-checking the Ed25519 signature of a token this signer already
    accepted (a pure function of the token). Expiry is still checked on every call (an expired
    token goes through the full check, which refuses it), and the caller still reads the session
    row, so a revocation counts at once. Keyed by a digest: the token itself is not kept."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return signer.verify(token, now)
    cache = _verified.setdefault(signer, {})
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    claims = cache.get(digest)
    if claims is not None and claims.expires_at > now:
        return claims
    claims = signer.verify(token, now)
    if len(cache) >= _VERIFIED_MAX:
        cache.clear()
    cache[digest] = claims
    return claims


def session_view(session: Session, user: str, now: datetime) -> dict:
    state = "revoked" if session.revoked_at else ("expired" if session.expires_at <= now else "active")
    return {"id": session.id, "user": user, "created_at": session.created_at.isoformat(),
            "expires_at": session.expires_at.isoformat(), "state": state}


def list_sessions(cp: ControlPlane, actor: Actor, *, include_ended: bool = False) -> list[dict]:
    """Admins (with an API key) see every session; other users their own."""
    now = cp.now()
    with cp.db.transaction() as s:
        query = select(Session, User.name).join(User, User.id == Session.user_id).order_by(Session.created_at)
        if not actor.admin_power:
            query = query.where(Session.user_id == actor.user_id)
        views = [session_view(sess, name, now) for sess, name in s.execute(query)]
    return views if include_ended else [v for v in views if v["state"] == "active"]


def revoke_session(cp: ControlPlane, actor: Actor, session_id: str) -> dict:
    now = cp.now()
    with cp.db.transaction() as s:
        row = s.execute(select(Session, User.name).join(User, User.id == Session.user_id)
                        .where(Session.id == session_id)).first()
        if row is None or (row[0].user_id != actor.user_id and not actor.admin_power):
            raise NotFound(f"no session {session_id!r} that you may revoke (see `sdm session list`)")
        session, owner = row
        if session.revoked_at is None:
            session.revoked_at = now
            cp.record(s, session_event("end", user=owner, session_id=session.id,
                                       details={"reason": "revoked", "by": actor.name}))
            if owner != actor.name:
                cp.record(s, admin_event(actor.name, "session.revoke", user=owner, session_id=session.id))
        return session_view(session, owner, now)
