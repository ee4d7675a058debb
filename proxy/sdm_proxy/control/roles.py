"""Roles, membership and leases (role → credential)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from ..audit.events import admin_event
from ..errors import Conflict, NotFound
from ..validation import check_name
from .catalog import get_credential
from .context import Actor, ControlPlane
from .models import Credential, Datasource, Lease, Role, RoleMember, User
from .users import get_user


def get_role(s: DBSession, name: str) -> Role:
    role = s.scalar(select(Role).where(Role.name == name))
    if role is None:
        raise NotFound(f"no role named {name!r} (see `sdm role list`)")
    return role


def create_role(cp: ControlPlane, actor: Actor, name: str) -> dict:
    actor.require_admin("creating a role")
    check_name("role", name)
    with cp.db.transaction() as s:
        if s.scalar(select(Role.id).where(Role.name == name)) is not None:
            raise Conflict(f"role {name!r} already exists")
        s.add(Role(name=name))
        cp.record(s, admin_event(actor.name, "role.create", target=name))
    return {"role": name}


def assign_role(cp: ControlPlane, actor: Actor, role_name: str, user_name: str) -> dict:
    actor.require_admin("assigning a role")
    with cp.db.transaction() as s:
        role, user = get_role(s, role_name), get_user(s, user_name)
        exists = s.scalar(select(RoleMember.id).where(
            RoleMember.role_id == role.id, RoleMember.user_id == user.id))
        if exists is not None:
            raise Conflict(f"user {user_name!r} already has role {role_name!r}")
        s.add(RoleMember(role_id=role.id, user_id=user.id))
        cp.record(s, admin_event(actor.name, "role.assign", target=role_name, user=user_name))
    return {"role": role_name, "user": user_name}


def lease(cp: ControlPlane, actor: Actor, role_name: str, datasource: str, credential: str) -> dict:
    actor.require_admin("leasing a credential")
    with cp.db.transaction() as s:
        role = get_role(s, role_name)
        cred = get_credential(s, datasource, credential)
        exists = s.scalar(select(Lease.id).where(Lease.role_id == role.id, Lease.credential_id == cred.id))
        if exists is not None:
            raise Conflict(f"role {role_name!r} already leases {datasource}/{credential}")
        s.add(Lease(role_id=role.id, credential_id=cred.id))
        cp.record(s, admin_event(actor.name, "role.lease", target=role_name,
                                 datasource=datasource, credential=credential))
    return {"role": role_name, "datasource": datasource, "credential": credential}


def delete_role(cp: ControlPlane, actor: Actor, name: str) -> dict:
    actor.require_admin("deleting a role")
    with cp.db.transaction() as s:
        s.delete(get_role(s, name))
        cp.record(s, admin_event(actor.name, "role.delete", target=name))
    return {"deleted": name}


def unassign_role(cp: ControlPlane, actor: Actor, role_name: str, user_name: str) -> dict:
    actor.require_admin("removing a role member")
    with cp.db.transaction() as s:
        role, user = get_role(s, role_name), get_user(s, user_name)
        member = s.scalar(select(RoleMember).where(RoleMember.role_id == role.id, RoleMember.user_id == user.id))
        if member is None:
            raise NotFound(f"user {user_name!r} does not have role {role_name!r}")
        s.delete(member)
        cp.record(s, admin_event(actor.name, "role.unassign", target=role_name, user=user_name))
    return {"role": role_name, "user": user_name}


def unlease(cp: ControlPlane, actor: Actor, role_name: str, datasource: str, credential: str) -> dict:
    actor.require_admin("ending a lease")
    with cp.db.transaction() as s:
        role = get_role(s, role_name)
        cred = get_credential(s, datasource, credential)
        row = s.scalar(select(Lease).where(Lease.role_id == role.id, Lease.credential_id == cred.id))
        if row is None:
            raise NotFound(f"role {role_name!r} does not lease {datasource}/{credential}")
        s.delete(row)
        cp.record(s, admin_event(actor.name, "role.unlease", target=role_name,
                                 datasource=datasource, credential=credential))
    return {"role": role_name, "datasource": datasource, "credential": credential}


def list_roles(cp: ControlPlane, actor: Actor) -> list[dict]:
    actor.require_admin("listing roles")
    with cp.db.transaction() as s:
        out = []
        for role in s.scalars(select(Role).order_by(Role.name)):
            members = s.scalars(
                select(User.name).join(RoleMember, RoleMember.user_id == User.id)
                .where(RoleMember.role_id == role.id).order_by(User.name)).all()
            leases = s.execute(
                select(Datasource.name, Credential.name)
                .join(Credential, Credential.datasource_id == Datasource.id)
                .join(Lease, Lease.credential_id == Credential.id)
                .where(Lease.role_id == role.id).order_by(Datasource.name, Credential.name)).all()
            out.append({
                "role": role.name,
                "members": list(members),
                "leases": [f"{ds}/{cred}" for ds, cred in leases],
            })
        return out
