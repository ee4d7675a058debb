"""Lean reads of the live state for the unlock path, the live access checks and ``access``.

Why: an unlock runs on every gateway connect, and ORM entity loads (identity map, lazy
relationships, autoflush) cost more than the queries themselves. These are prebuilt Core selects
of just the columns a decision needs, run on the caller's transaction connection (SQLite and
PostgreSQL alike). Nothing here is cached: every call reads the state as it is now, so a revoked
session, grant, lease or proxy and a rotated credential are seen at once. The decisions stay pure,
in ``policy``: these functions only gather the facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, bindparam, null, select, union_all
from sqlalchemy.engine import Connection

from ..vault.envelope import EncryptionContext
from .secret_context import credential_context
from .catalog import credential_not_found, datasource_not_found
from .models import (
    Credential,
    Datasource,
    Grant,
    Lease,
    ProxyInstance,
    Role,
    RoleMember,
    Session,
    User,
)
from .policy import AccessFacts, GrantFacts, SessionFacts

_P, _S, _U = ProxyInstance.__table__, Session.__table__, User.__table__
_D, _C = Datasource.__table__, Credential.__table__
_R, _RM, _L, _G = Role.__table__, RoleMember.__table__, Lease.__table__, Grant.__table__

_PROXY = select(_P.c.public_key, _P.c.revoked_at).where(_P.c.id == bindparam("proxy_id"))

_SESSION = (
    select(_S.c.expires_at, _S.c.revoked_at, _U.c.id, _U.c.name, _U.c.is_admin)
    .join_from(_S, _U, _U.c.id == _S.c.user_id)
    .where(_S.c.id == bindparam("session_id"))
)

_DS_COLUMNS = (_D.c.id, _D.c.name, _D.c.type, _D.c.host, _D.c.port, _D.c.database, _D.c.tls_mode, _D.c.ca_file)
_CRED_COLUMNS = (_C.c.id, _C.c.name, _C.c.db_username, _C.c.version, _C.c.sealed, _C.c.secret_ref,
                 _C.c.ref_binding)

# An outer join tells "no such datasource" (no row) from "no such credential" (a row of NULLs).
_NAMED_CREDENTIAL = (
    select(*_DS_COLUMNS, *_CRED_COLUMNS)
    .select_from(_D.outerjoin(_C, and_(_C.c.datasource_id == _D.c.id, _C.c.name == bindparam("credential"))))
    .where(_D.c.name == bindparam("datasource"))
)
_ALL_CREDENTIALS = (
    select(*_DS_COLUMNS, *_CRED_COLUMNS)
    .select_from(_D.outerjoin(_C, _C.c.datasource_id == _D.c.id))
    .where(_D.c.name == bindparam("datasource"))
    .order_by(_C.c.name)
)


def _facts_query(grant_filter, lease_filter, via_credentials: bool):
    """One round trip for both kinds of access: grant rows (expires_at set) UNION ALL leasing
    roles (role set). Grants come first so the result columns keep their UtcDateTime type."""
    grants = select(_G.c.credential_id, null().label("role"), _G.c.expires_at, _G.c.revoked_at)
    roles = (select(_L.c.credential_id, _R.c.name, null(), null())
             .join_from(_R, _RM, _RM.c.role_id == _R.c.id).join(_L, _L.c.role_id == _R.c.id))
    if via_credentials:
        grants = grants.join_from(_G, _C, _C.c.id == _G.c.credential_id)
        roles = roles.join(_C, _C.c.id == _L.c.credential_id)
    return union_all(grants.where(_G.c.user_id == bindparam("user_id"), grant_filter),
                     roles.where(_RM.c.user_id == bindparam("user_id"), lease_filter))


_FACTS_OF_CREDENTIAL = _facts_query(_G.c.credential_id == bindparam("credential_id"),
                                    _L.c.credential_id == bindparam("credential_id"), False)
_FACTS_ON_DATASOURCE = _facts_query(_C.c.datasource_id == bindparam("datasource_id"),
                                    _C.c.datasource_id == bindparam("datasource_id"), True)


@dataclass(frozen=True)
class SessionRow:
    user_id: int
    user: str
    is_admin: bool
    expires_at: datetime
    revoked_at: datetime | None

    def facts(self) -> SessionFacts:
        return SessionFacts(True, self.user, self.expires_at, self.revoked_at)


@dataclass(frozen=True)
class DatasourceRow:
    id: int
    name: str
    type: str
    host: str
    port: int
    database: str | None
    tls_mode: str
    ca_file: str | None


@dataclass(frozen=True)
class CredentialRow:
    id: int
    name: str
    db_username: str
    version: int
    sealed: str | None = field(repr=False)  # envelope JSON: ciphertext, still never shown
    secret_ref: str | None = field(repr=False)
    ref_binding: str | None = field(repr=False)  # the reference sealed for this row (catalog.bind_reference)
    datasource: DatasourceRow = field(repr=False)

    def encryption_context(self) -> EncryptionContext:
        return credential_context(self.datasource, self.name, self.version, self.db_username)



def proxy_key(conn: Connection, proxy_id: str):
    """(public_key, revoked_at) of an enrolled proxy, or None."""
    return conn.execute(_PROXY, {"proxy_id": proxy_id}).first()


def session_row(conn: Connection, session_id: str) -> SessionRow | None:
    row = conn.execute(_SESSION, {"session_id": session_id}).first()
    if row is None:
        return None
    expires_at, revoked_at, user_id, user, is_admin = row
    return SessionRow(user_id, user, is_admin, expires_at, revoked_at)


def _credential_rows(rows) -> tuple[DatasourceRow | None, list[CredentialRow]]:
    ds, creds = None, []
    for row in rows:
        ds = ds or DatasourceRow(*row[:8])
        if row[8] is not None:
            creds.append(CredentialRow(*row[8:], datasource=ds))
    return ds, creds


def named_credential(conn: Connection, datasource: str, credential: str) -> CredentialRow:
    """Raises NotFound with the same messages as ``catalog.get_credential``."""
    ds, creds = _credential_rows(conn.execute(
        _NAMED_CREDENTIAL, {"datasource": datasource, "credential": credential}))
    if ds is None:
        raise datasource_not_found(datasource)
    if not creds:
        raise credential_not_found(datasource, credential)
    return creds[0]


def datasource_credentials(conn: Connection, datasource: str) -> list[CredentialRow]:
    """Every credential of a datasource, by name (NotFound when the datasource is missing)."""
    ds, creds = _credential_rows(conn.execute(_ALL_CREDENTIALS, {"datasource": datasource}))
    if ds is None:
        raise datasource_not_found(datasource)
    return creds


def credential_access_facts(conn: Connection, user_id: int, user_name: str, datasource: str,
                            credential_id: int, credential: str) -> AccessFacts:
    """``AccessFacts`` of one user on one credential."""
    rows = conn.execute(_FACTS_OF_CREDENTIAL, {"user_id": user_id, "credential_id": credential_id})
    return _access_facts(rows, user_name, datasource, [(credential_id, credential)])[0]


def datasource_access_facts(conn: Connection, user_id: int, user_name: str,
                            creds: list[CredentialRow]) -> list[AccessFacts]:
    """``AccessFacts`` of one user on each of ``creds`` (all of one datasource), in order."""
    if not creds:
        return []
    ds = creds[0].datasource
    rows = conn.execute(_FACTS_ON_DATASOURCE, {"user_id": user_id, "datasource_id": ds.id})
    return _access_facts(rows, user_name, ds.name, [(c.id, c.name) for c in creds])


def _access_facts(rows, user_name: str, datasource: str, creds: list[tuple[int, str]]) -> list[AccessFacts]:
    roles: dict[int, set[str]] = {}
    grants: dict[int, list[GrantFacts]] = {}
    for cred_id, role, expires_at, revoked_at in rows:
        if expires_at is not None:  # a grant row (grants.expires_at is NOT NULL)
            grants.setdefault(cred_id, []).append(GrantFacts(expires_at, revoked_at))
        else:
            roles.setdefault(cred_id, set()).add(role)
    return [AccessFacts(user=user_name, datasource=datasource, credential=name,
                        leasing_roles=frozenset(roles.get(cid, ())), grants=tuple(grants.get(cid, ())))
            for cid, name in creds]
