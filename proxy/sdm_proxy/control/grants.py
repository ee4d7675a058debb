"""Temporary grants: user → credential directly, until an expiry."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from ..audit.events import admin_event
from ..errors import NotFound
from .catalog import get_credential
from .context import Actor, ControlPlane
from .models import Credential, Datasource, Grant, User
from .users import get_user


def grant_view(g: Grant, user: str, datasource: str, credential: str, now) -> dict:
    state = "revoked" if g.revoked_at else ("expired" if g.expires_at <= now else "active")
    return {
        "id": g.id, "user": user, "datasource": datasource, "credential": credential,
        "expires_at": g.expires_at.isoformat(), "created_by": g.created_by, "state": state,
    }


def create_grant(cp: ControlPlane, actor: Actor, user_name: str, datasource: str, credential: str,
                 duration: timedelta) -> dict:
    actor.require_admin("granting access")
    now = cp.now()
    with cp.db.transaction() as s:
        user = get_user(s, user_name)
        cred = get_credential(s, datasource, credential)
        g = Grant(user_id=user.id, credential_id=cred.id, expires_at=now + duration, created_by=actor.name)
        s.add(g)
        s.flush()
        cp.record(s, admin_event(actor.name, "grant.create", user=user_name, datasource=datasource,
                                 credential=credential, expires_at=g.expires_at.isoformat()))
        return grant_view(g, user_name, datasource, credential, now)


def revoke_grants(cp: ControlPlane, actor: Actor, user_name: str, datasource: str, credential: str) -> dict:
    actor.require_admin("revoking a grant")
    now = cp.now()
    with cp.db.transaction() as s:
        user = get_user(s, user_name)
        cred = get_credential(s, datasource, credential)
        live = s.scalars(select(Grant).where(
            Grant.user_id == user.id, Grant.credential_id == cred.id,
            Grant.revoked_at.is_(None), Grant.expires_at > now)).all()
        if not live:
            raise NotFound(f"user {user_name!r} has no active grant on {datasource}/{credential}")
        for g in live:
            g.revoked_at = now
        cp.record(s, admin_event(actor.name, "grant.revoke", user=user_name, datasource=datasource,
                                 credential=credential, grants=len(live)))
        return {"revoked": len(live), "user": user_name, "datasource": datasource, "credential": credential}


def list_grants(cp: ControlPlane, actor: Actor, *, include_ended: bool = False) -> list[dict]:
    actor.require_admin("listing grants")
    now = cp.now()
    with cp.db.transaction() as s:
        rows = s.execute(
            select(Grant, User.name, Datasource.name, Credential.name)
            .join(User, User.id == Grant.user_id)
            .join(Credential, Credential.id == Grant.credential_id)
            .join(Datasource, Datasource.id == Credential.datasource_id)
            .order_by(Grant.expires_at)).all()
        views = [grant_view(g, u, d, c, now) for g, u, d, c in rows]
    return views if include_ended else [v for v in views if v["state"] == "active"]
