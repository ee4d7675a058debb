"""What any authenticated user may do: sessions, whoami, usable datasources, own activity."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..control import sessions, users
from ..control.access import usable_credentials, usable_view
from ..control.context import Actor
from ..validation import parse_duration
from .audit_reads import audit_settled
from .auth import current_actor, session_minter
from .schemas import SessionCreate

router = APIRouter(prefix="/v1", tags=["user"])


@router.post("/sessions", status_code=201)
def create_session(body: SessionCreate, request: Request, caller=Depends(session_minter)) -> dict:
    actor, via = caller
    addr = request.client.host if request.client else None
    return sessions.create_session(request.app.state.cp, actor, parse_duration(body.ttl), addr,
                                   label=body.client, via=via)


@router.get("/sessions")
def list_sessions(request: Request, all: bool = False, actor: Actor = Depends(current_actor)) -> list[dict]:
    return sessions.list_sessions(request.app.state.cp, actor, include_ended=all)


@router.delete("/sessions/{session_id}")
def revoke_session(session_id: str, request: Request, actor: Actor = Depends(current_actor)) -> dict:
    return sessions.revoke_session(request.app.state.cp, actor, session_id)


@router.get("/me")
def whoami(request: Request, actor: Actor = Depends(current_actor)) -> dict:
    return {"user": actor.name, "admin": actor.is_admin, "session_id": actor.session_id}


@router.get("/gateway")
def gateway_info(request: Request, actor: Actor = Depends(current_actor)) -> dict:
    """Where this gateway's wire listeners are (clients log in there with a session token)."""
    return {"listeners": dict(getattr(request.app.state, "listeners", None) or {})}


@router.get("/datasources")
def my_datasources(request: Request, actor: Actor = Depends(current_actor)) -> list[dict]:
    cp = request.app.state.cp
    with cp.db.transaction() as s:
        return [usable_view(c, d) for c, d in usable_credentials(s, actor.user_id, actor.name, cp.now())]


@router.get("/activity")
async def my_activity(request: Request, n: int = 50, actor: Actor = Depends(current_actor)) -> list[dict]:
    n = max(1, min(n, 1000))
    await audit_settled(request)
    cp = request.app.state.cp
    # Events are kept by name; a user removed and added again under the same name must not see
    # the earlier one's statements: only events since this user was created are theirs.
    since = await run_in_threadpool(users.created_ts, cp, actor.user_id)
    events = await run_in_threadpool(cp.audit.tail, n, user=actor.name, since=since)
    return [e.to_dict() for e in events]
