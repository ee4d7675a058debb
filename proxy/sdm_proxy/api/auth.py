"""Who is calling: a bearer API key (``sdmk_…``) or session token (``sdms.…``)."""

from __future__ import annotations

from fastapi import Request

from ..control.context import Actor, ControlPlane
from ..control.sessions import authenticate_session
from ..control.tokens import API_KEY_PREFIX
from ..control.users import authenticate_api_key
from ..errors import AuthenticationFailed


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing credentials: send `Authorization: Bearer <API key or session token>`")
    return token.strip()


def authenticate(cp: ControlPlane, token: str) -> Actor:
    if token.startswith(API_KEY_PREFIX):
        return authenticate_api_key(cp, token)
    with cp.db.transaction() as s:
        return authenticate_session(cp, s, token, cp.now())


def current_actor(request: Request) -> Actor:
    return authenticate(request.app.state.cp, bearer(request))


def api_key_actor(request: Request) -> Actor:
    """For admin routes and for minting sessions: a session token (what a kernel holds) must not
    turn itself into longer-lived credentials or admin power, so these take an API key only."""
    token = bearer(request)
    if not token.startswith(API_KEY_PREFIX):
        raise AuthenticationFailed("this route needs an API key (sdmk_…), not a session token")
    return authenticate_api_key(request.app.state.cp, token)
