"""Who may use which credential: gathers facts from the state and asks ``policy``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from .models import Credential, Datasource, Grant, Lease, RoleMember
from .policy import AccessFacts, Decision, access_decision
from .unlock_facts import credential_access_facts


def access_facts(s: DBSession, user_id: int, user_name: str, cred: Credential) -> AccessFacts:
    return credential_access_facts(s.connection(), user_id, user_name, cred.datasource.name, cred.id, cred.name)


def decide(s: DBSession, user_id: int, user_name: str, cred: Credential, now: datetime) -> Decision:
    return access_decision(access_facts(s, user_id, user_name, cred), now)


def usable_credentials(s: DBSession, user_id: int, user_name: str, now: datetime,
                       datasource: str | None = None) -> list[tuple[Credential, Decision]]:
    """Every credential the user may use now, with how (role or grant) and until when."""
    candidates = select(Credential).join(Datasource).order_by(Datasource.name, Credential.name)
    if datasource is not None:
        candidates = candidates.where(Datasource.name == datasource)
    via_roles = select(Lease.credential_id).join(RoleMember, RoleMember.role_id == Lease.role_id).where(
        RoleMember.user_id == user_id)
    via_grants = select(Grant.credential_id).where(
        Grant.user_id == user_id, Grant.revoked_at.is_(None), Grant.expires_at > now)
    candidates = candidates.where(Credential.id.in_(via_roles.union(via_grants)))
    out = []
    for cred in s.scalars(candidates):
        decision = decide(s, user_id, user_name, cred, now)
        if decision.allowed:
            out.append((cred, decision))
    return out


def usable_view(cred: Credential, decision: Decision) -> dict:
    ds = cred.datasource
    return {
        "datasource": ds.name, "type": ds.type, "credential": cred.name, "db_user": cred.db_username,
        "via": decision.via, "expires_at": decision.expires_at.isoformat() if decision.expires_at else None,
    }
