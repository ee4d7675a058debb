"""Admin operations: the same service functions the CLI calls, over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import binascii

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..audit.verify import verify_db
from ..control import catalog, grants, proxies, roles, users
from ..control.context import Actor
from ..errors import UsageError
from ..validation import parse_duration
from ..vault.secret import SecretValue
from .audit_reads import audit_settled
from .auth import api_key_actor
from .schemas import (CredentialCreate, CredentialRotate, DatasourceCreate, GrantCreate, LeaseCreate,
                      ProxyEnroll, RoleAssign, RoleCreate, UserCreate)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _cp(request: Request):
    return request.app.state.cp


@router.get("/users")
def list_users(request: Request, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return users.list_users(_cp(request), actor)


@router.post("/users", status_code=201)
def add_user(body: UserCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return users.add_user(_cp(request), actor, body.name, is_admin=body.admin)


@router.delete("/users/{name}")
def remove_user(name: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return users.remove_user(_cp(request), actor, name)


@router.delete("/keys/{prefix}")
def revoke_key(prefix: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return users.revoke_api_key(_cp(request), actor, prefix)


@router.post("/users/{name}/keys", status_code=201)
def create_key(name: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return {"user": name, "api_key": users.create_api_key(_cp(request), actor, name)}


@router.get("/roles")
def list_roles(request: Request, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return roles.list_roles(_cp(request), actor)


@router.post("/roles", status_code=201)
def create_role(body: RoleCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.create_role(_cp(request), actor, body.name)


@router.post("/roles/{role}/members", status_code=201)
def assign_role(role: str, body: RoleAssign, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.assign_role(_cp(request), actor, role, body.user)


@router.post("/roles/{role}/leases", status_code=201)
def lease(role: str, body: LeaseCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.lease(_cp(request), actor, role, body.datasource, body.credential)


@router.delete("/roles/{role}")
def delete_role(role: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.delete_role(_cp(request), actor, role)


@router.delete("/roles/{role}/members/{user}")
def unassign_role(role: str, user: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.unassign_role(_cp(request), actor, role, user)


@router.delete("/roles/{role}/leases/{datasource}/{credential}")
def unlease(role: str, datasource: str, credential: str, request: Request,
            actor: Actor = Depends(api_key_actor)) -> dict:
    return roles.unlease(_cp(request), actor, role, datasource, credential)


@router.get("/datasources")
def list_datasources(request: Request, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return catalog.list_datasources(_cp(request), actor)


@router.post("/datasources", status_code=201)
def add_datasource(body: DatasourceCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return catalog.add_datasource(_cp(request), actor, body.name, type=body.type, host=body.host,
                                  port=body.port, database=body.database, tls=body.tls, ca_file=body.ca_file)


@router.delete("/datasources/{name}")
def remove_datasource(name: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return catalog.remove_datasource(_cp(request), actor, name)


@router.get("/credentials")
def list_credentials(request: Request, datasource: str | None = None,
                     actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return catalog.list_credentials(_cp(request), actor, datasource)


def _secret(password: str) -> SecretValue:
    try:
        return SecretValue.from_text(password)
    except ValueError:  # its message holds no part of the password
        raise UsageError("invalid password: it is not valid Unicode text") from None


@router.post("/credentials", status_code=201)
def add_credential(body: CredentialCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    secret = _secret(body.password) if body.password is not None else None
    return catalog.add_credential(_cp(request), actor, body.datasource, body.name, username=body.username,
                                  secret=secret, secret_ref=body.secret_ref)


@router.post("/credentials/{datasource}/{name}/rotate")
def rotate_credential(datasource: str, name: str, body: CredentialRotate, request: Request,
                      actor: Actor = Depends(api_key_actor)) -> dict:
    return catalog.rotate_credential(_cp(request), actor, datasource, name,
                                     secret=_secret(body.password))


@router.delete("/credentials/{datasource}/{name}")
def remove_credential(datasource: str, name: str, request: Request,
                      actor: Actor = Depends(api_key_actor)) -> dict:
    return catalog.remove_credential(_cp(request), actor, datasource, name)


@router.get("/grants")
def list_grants(request: Request, all: bool = False, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return grants.list_grants(_cp(request), actor, include_ended=all)


@router.post("/grants", status_code=201)
def create_grant(body: GrantCreate, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return grants.create_grant(_cp(request), actor, body.user, body.datasource, body.credential,
                               parse_duration(body.duration))


@router.delete("/grants/{user}/{datasource}/{credential}")
def revoke_grant(user: str, datasource: str, credential: str, request: Request,
                 actor: Actor = Depends(api_key_actor)) -> dict:
    return grants.revoke_grants(_cp(request), actor, user, datasource, credential)


@router.get("/proxies")
def list_proxies(request: Request, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    return proxies.list_proxies(_cp(request), actor)


@router.post("/proxies", status_code=201)
def enroll_proxy(body: ProxyEnroll, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    try:
        public_key = base64.b64decode(body.public_key, validate=True)
    except binascii.Error:
        raise UsageError("public_key must be base64") from None
    return proxies.enroll_proxy(_cp(request), actor, public_key)


@router.post("/proxies/{proxy_id}/revoke")
def revoke_proxy(proxy_id: str, request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    return proxies.revoke_proxy(_cp(request), actor, proxy_id)


@router.get("/audit")
async def audit_tail(request: Request, n: int = 50, actor: Actor = Depends(api_key_actor)) -> list[dict]:
    actor.require_admin("reading the whole audit log")
    await audit_settled(request)
    events = await run_in_threadpool(_cp(request).audit.tail, max(1, min(n, 10000)))
    return [e.to_dict() for e in events]


@router.get("/audit/verify")
def audit_verify(request: Request, actor: Actor = Depends(api_key_actor)) -> dict:
    actor.require_admin("verifying the audit log")
    cp = _cp(request)
    return dataclasses.asdict(verify_db(cp.db, cp.audit.signer.public_key))
