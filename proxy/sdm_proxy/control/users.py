"""Users and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from ..audit.events import admin_event, session_event
from ..errors import AccessDenied, AuthenticationFailed, Conflict, NotFound
from ..validation import check_name
from .context import Actor, ControlPlane
from .models import ApiKey, Role, RoleMember, Session, User
from .tokens import api_key_matches, api_key_prefix, new_api_key


def get_user(s: DBSession, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r} (see `sdm user list`)")
    return user


def create_user(s: DBSession, name: str, *, is_admin: bool) -> User:
    check_name("user", name)
    if s.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = User(name=name, is_admin=is_admin)
    s.add(user)
    s.flush()
    return user


def add_user(cp: ControlPlane, actor: Actor, name: str, *, is_admin: bool = False) -> dict:
    actor.require_admin("adding a user")
    with cp.db.transaction() as s:
        user = create_user(s, name, is_admin=is_admin)
        cp.record(s, admin_event(actor.name, "user.add", target=name, is_admin=is_admin))
        return user_view(s, user)


def issue_api_key(s: DBSession, user: User, parent_key_id: int | None = None) -> str:
    """Store a new key's prefix and hash; return the plain key (shown once by the caller)."""
    key = new_api_key()
    s.add(ApiKey(user_id=user.id, prefix=key.prefix, key_hash=key.key_hash, parent_key_id=parent_key_id))
    s.flush()
    return key.plain


def create_api_key(cp: ControlPlane, actor: Actor, name: str) -> str:
    if name != actor.name:
        actor.require_admin("creating another user's API key")
    with cp.db.transaction() as s:
        user = get_user(s, name)
        # A key a user mints for themselves hangs off the key that minted it (see revoke_api_key).
        plain = issue_api_key(s, user, actor.api_key_id if name == actor.name else None)
        cp.record(s, admin_event(actor.name, "user.key", target=name, key_prefix=plain[5:13]))
        return plain


def remove_user(cp: ControlPlane, actor: Actor, name: str) -> dict:
    """Delete a user with their keys, sessions, grants and memberships (audit events stay)."""
    actor.require_admin("removing a user")
    if name == actor.name:
        raise Conflict("you cannot remove yourself; ask another admin")
    with cp.db.transaction() as s:
        user = get_user(s, name)
        s.delete(user)
        cp.record(s, admin_event(actor.name, "user.remove", target=name))
    return {"removed": name}


def revoke_api_key(cp: ControlPlane, actor: Actor, prefix: str) -> dict:
    """Revoke a key by its public prefix (as `sdm user list` shows it); own keys or, for admins, any."""
    with cp.db.transaction() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None or (row.user_id != actor.user_id and not actor.admin_power):
            raise NotFound(f"no API key with prefix {prefix!r} that you may revoke (see `sdm user list`)")
        if row.revoked_at is None:
            row.revoked_at = cp.now()
            cp.record(s, admin_event(actor.name, "user.key_revoke", target=row.user.name, key_prefix=prefix))
        keys, ended = _revoke_what_the_key_made(cp, s, actor, row)
        return {"revoked": prefix, "user": row.user.name, "keys_revoked": keys, "sessions_revoked": ended}


def _revoke_what_the_key_made(cp: ControlPlane, s: DBSession, actor: Actor, key: ApiKey) -> tuple[list[str], int]:
    """A leaked key's sessions and the keys it minted (theirs too, down the line) end with it:
    otherwise revoking it would leave whoever held it a working session or key. Each is recorded.

    Spared: when the key making this request was itself minted, down the line, by the revoked
    one, it and what it minted, so that rotating a key (mint a new one with the old, then revoke
    the old with the new) does not lock its user out. Nothing else: a key revoked with itself, or
    with a key above it, takes everything it minted along (review: a thief's keys survived
    "revoke the leaked key" run with that same key)."""
    now = cp.now()
    children = _minted_by(s, [key.id])
    below = {child.id for child in children}
    spared = set(_subtree(s, actor.api_key_id)) if actor.api_key_id in below else set()
    lineage, keys = {key.id}, []
    for child in children:
        if child.id in spared:
            continue
        lineage.add(child.id)
        if child.revoked_at is None:
            child.revoked_at = now
            keys.append(child.prefix)
            cp.record(s, admin_event(actor.name, "user.key_revoke", target=key.user.name,
                                     key_prefix=child.prefix, minted_by=key.prefix))
    sessions = s.scalars(select(Session).where(Session.api_key_id.in_(lineage), Session.revoked_at.is_(None),
                                               Session.expires_at > now)).all()
    for session in sessions:
        session.revoked_at = now
        cp.record(s, session_event("end", user=key.user.name, session_id=session.id,
                                   details={"reason": "api key revoked", "by": actor.name, "key_prefix": key.prefix}))
    return keys, len(sessions)


def _minted_by(s: DBSession, roots: list[int]) -> list[ApiKey]:
    """Every key minted, directly or down the line, by one of ``roots`` (not the roots)."""
    found: list[ApiKey] = []
    seen, frontier = set(roots), list(roots)
    while frontier:
        children = [k for k in s.scalars(select(ApiKey).where(ApiKey.parent_key_id.in_(frontier))) if k.id not in seen]
        seen.update(k.id for k in children)
        found += children
        frontier = [k.id for k in children]
    return found


def _subtree(s: DBSession, root: int) -> list[int]:
    return [root, *(k.id for k in _minted_by(s, [root]))]


def authenticate_api_key(cp: ControlPlane, plain: str) -> Actor:
    prefix = api_key_prefix(plain)
    with cp.db.transaction() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None or row.revoked_at is not None or not api_key_matches(plain, row.key_hash):
            raise AuthenticationFailed("invalid or revoked API key")
        return Actor(user_id=row.user.id, name=row.user.name, is_admin=row.user.is_admin, api_key_id=row.id)


def created_ts(cp: ControlPlane, user_id: int) -> str | None:
    """When the user was created, as audit events stamp time (text order is time order)."""
    with cp.db.transaction() as s:
        created = s.scalar(select(User.created_at).where(User.id == user_id))
    return created.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if created is not None else None


def actor_for_hub_user(cp: ControlPlane, name: str) -> Actor:
    """The sdm user a JupyterHub user maps to: the one of the same name (control/hub_identity.py)."""
    with cp.db.transaction() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise AccessDenied(f"JupyterHub user {name!r} has no sdm account: an admin adds it with "
                               f"`sdm user add {name}` and gives it a role")
        if user.is_admin:  # a hub admin can name a hub user anything: sdm admins are not theirs to be
            raise AccessDenied(f"sdm user {name!r} is an sdm admin: admins use an API key (SDM_API_KEY), "
                               "not a JupyterHub token")
        return Actor(user_id=user.id, name=user.name, is_admin=False)


def user_view(s: DBSession, user: User) -> dict:
    roles = s.scalars(
        select(Role.name).join(RoleMember, RoleMember.role_id == Role.id)
        .where(RoleMember.user_id == user.id).order_by(Role.name)
    ).all()
    keys = [k.prefix for k in user.api_keys if k.revoked_at is None]
    return {
        "name": user.name,
        "admin": user.is_admin,
        "roles": list(roles),
        "api_keys": keys,
        "created_at": user.created_at.isoformat(),
    }


def list_users(cp: ControlPlane, actor: Actor) -> list[dict]:
    """Every user for an admin; for anyone else only themselves, so a user can see the prefixes of
    their own live API keys (to revoke a leaked one, and spot keys minted with it)."""
    query = select(User).order_by(User.name)
    if not actor.admin_power:
        query = query.where(User.id == actor.user_id)
    with cp.db.transaction() as s:
        return [user_view(s, u) for u in s.scalars(query)]
