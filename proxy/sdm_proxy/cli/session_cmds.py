"""``sdm session``: short-lived session tokens for the caller."""

from __future__ import annotations

import json

import click

from ..control import sessions
from ..validation import parse_duration
from .common import as_caller, emit, json_option


@click.group()
def session() -> None:
    """Session tokens (what a kernel or psql uses instead of a DB password)."""


@session.command("create")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime, at most 24h.")
@json_option
@click.pass_context
def session_create(ctx, ttl, as_json):
    """Create a session for the caller (SDM_API_KEY or the saved admin key) and print its token."""
    lifetime = parse_duration(ttl)
    with as_caller(ctx) as (cp, actor):
        result = sessions.create_session(cp, actor, lifetime)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(result["token"])


@session.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include expired and revoked sessions.")
@json_option
@click.pass_context
def session_list(ctx, include_ended, as_json):
    """List sessions (admins see all, others their own)."""
    with as_caller(ctx) as (cp, actor):
        emit(sessions.list_sessions(cp, actor, include_ended=include_ended), as_json,
             ["id", "user", "created_at", "expires_at", "state"])


@session.command("revoke")
@click.argument("session_id")
@click.pass_context
def session_revoke(ctx, session_id):
    """Revoke a session: its token stops working at once."""
    with as_caller(ctx) as (cp, actor):
        sessions.revoke_session(cp, actor, session_id)
    click.echo(f"revoked session {session_id}")
