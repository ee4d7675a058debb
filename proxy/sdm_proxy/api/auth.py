"""Who is calling: a bearer API key (``sdmk_…``) or session token (``sdms.…``), or, only to mint a
session, a JupyterHub API token when the gateway knows the hub (control/hub_identity.py)."""

from __future__ import annotations

from fastapi import Request

from ..control.context import Actor, ControlPlane
from ..control.sessions import authenticate_session
from ..control.tokens import API_KEY_PREFIX
from ..control.tokens import SESSION_TOKEN_PREFIX
from ..control.users import actor_for_hub_user, authenticate_api_key
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


def session_minter(request: Request) -> tuple[Actor, str | None]:
    """For ``POST /v1/sessions``: an API key, or a JupyterHub token the hub vouches for (then the
    sdm user of the same name); returns the actor and what vouched for it when not an API key."""
    token = bearer(request)
    hub = getattr(request.app.state, "hub_identity", None)
    if token.startswith((API_KEY_PREFIX, SESSION_TOKEN_PREFIX)):
        return api_key_actor(request), None
    if hub is None:
        raise AuthenticationFailed("invalid API key (a JupyterHub token is taken only by a gateway started "
                                   "with --jupyterhub-api-url)")
    peer = request.client.host if request.client else None
    return actor_for_hub_user(request.app.state.cp, hub.user_for_token(token, peer)), "jupyterhub"
