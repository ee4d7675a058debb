"""Admin command groups: datasource, credential, role, user, grant, proxy."""

from __future__ import annotations

import base64

import click

from ..control import catalog, grants, proxies, roles, users
from ..errors import UsageError
from ..validation import DATASOURCE_TYPES, TLS_MODES, parse_duration
from .common import as_caller, emit, json_option, read_secret_from_stdin


# --- datasource ---------------------------------------------------------------------------

@click.group()
def datasource() -> None:
    """Databases reachable through the gateway."""


@datasource.command("add")
@click.argument("name")
@click.option("--type", "ds_type", required=True, type=click.Choice(DATASOURCE_TYPES))
@click.option("--host", required=True)
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option("--database", default=None, help="Database (schema) name on the server.")
@click.option("--tls", default="disable", type=click.Choice(TLS_MODES), show_default=True)
@click.option("--ca-file", default=None, type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@json_option
@click.pass_context
def datasource_add(ctx, name, ds_type, host, port, database, tls, ca_file, as_json):
    """Add a datasource NAME."""
    with as_caller(ctx) as (cp, actor):
        emit(catalog.add_datasource(cp, actor, name, type=ds_type, host=host, port=port,
                                    database=database, tls=tls, ca_file=ca_file), as_json)


@datasource.command("list")
@json_option
@click.pass_context
def datasource_list(ctx, as_json):
    """List all datasources."""
    with as_caller(ctx) as (cp, actor):
        emit(catalog.list_datasources(cp, actor), as_json,
             ["name", "type", "host", "port", "database", "tls", "credentials"])


@datasource.command("remove")
@click.argument("name")
@click.pass_context
def datasource_remove(ctx, name):
    """Remove datasource NAME with its credentials, leases and grants."""
    with as_caller(ctx) as (cp, actor):
        catalog.remove_datasource(cp, actor, name)
    click.echo(f"removed datasource {name}")


# --- credential ---------------------------------------------------------------------------

@click.group()
def credential() -> None:
    """DB logins on a datasource. Secrets go in through stdin or a secret-store reference only."""


@credential.command("add")
@click.argument("datasource")
@click.argument("name")
@click.option("--username", required=True, help="The database login name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--secret-ref", default=None,
              help="aws-sm:<id>[#key] or file:/path (the gateway reads it; file: only in a directory "
                   "listed in config.json's secret_stores.file_roots).")
@json_option
@click.pass_context
def credential_add(ctx, datasource, name, username, password_stdin, secret_ref, as_json):
    """Add credential NAME on DATASOURCE."""
    if password_stdin == bool(secret_ref):
        raise UsageError("give exactly one of --password-stdin or --secret-ref")
    secret = read_secret_from_stdin() if password_stdin else None
    with as_caller(ctx) as (cp, actor):
        emit(catalog.add_credential(cp, actor, datasource, name, username=username,
                                    secret=secret, secret_ref=secret_ref), as_json)


@credential.command("list")
@click.argument("datasource", required=False)
@json_option
@click.pass_context
def credential_list(ctx, datasource, as_json):
    """List credentials (metadata only; secrets are never shown)."""
    with as_caller(ctx) as (cp, actor):
        emit(catalog.list_credentials(cp, actor, datasource), as_json,
             ["datasource", "name", "username", "version", "storage", "secret_ref"])


@credential.command("rotate")
@click.argument("datasource")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@click.option("--generate", is_flag=True,
              help="Generate a new password, set it on the database with the current login, store it.")
@json_option
@click.pass_context
def credential_rotate(ctx, datasource, name, password_stdin, generate, as_json):
    """Store a new secret for DATASOURCE NAME as the next version."""
    if password_stdin == generate:
        raise UsageError("give exactly one of --password-stdin or --generate")
    with as_caller(ctx) as (cp, actor):
        if generate:
            from ..control.rotation import rotate_with_generated_password
            result = rotate_with_generated_password(cp, actor, datasource, name)
        else:
            result = catalog.rotate_credential(cp, actor, datasource, name, secret=read_secret_from_stdin())
        emit(result, as_json)


@credential.command("remove")
@click.argument("datasource")
@click.argument("name")
@click.pass_context
def credential_remove(ctx, datasource, name):
    """Remove credential NAME from DATASOURCE."""
    with as_caller(ctx) as (cp, actor):
        catalog.remove_credential(cp, actor, datasource, name)
    click.echo(f"removed credential {datasource}/{name}")


# --- role ---------------------------------------------------------------------------------

@click.group()
def role() -> None:
    """Roles: groups of users that lease credentials."""


@role.command("create")
@click.argument("role_name")
@click.pass_context
def role_create(ctx, role_name):
    """Create role ROLE_NAME."""
    with as_caller(ctx) as (cp, actor):
        roles.create_role(cp, actor, role_name)
    click.echo(f"created role {role_name}")


@role.command("lease")
@click.argument("role_name")
@click.argument("datasource")
@click.argument("credential_name")
@click.pass_context
def role_lease(ctx, role_name, datasource, credential_name):
    """Let members of ROLE_NAME connect as DATASOURCE CREDENTIAL_NAME."""
    with as_caller(ctx) as (cp, actor):
        roles.lease(cp, actor, role_name, datasource, credential_name)
    click.echo(f"role {role_name} now leases {datasource}/{credential_name}")


@role.command("assign")
@click.argument("role_name")
@click.argument("user")
@click.pass_context
def role_assign(ctx, role_name, user):
    """Add USER to ROLE_NAME."""
    with as_caller(ctx) as (cp, actor):
        roles.assign_role(cp, actor, role_name, user)
    click.echo(f"user {user} now has role {role_name}")


@role.command("delete")
@click.argument("role_name")
@click.pass_context
def role_delete(ctx, role_name):
    """Delete ROLE_NAME with its memberships and leases."""
    with as_caller(ctx) as (cp, actor):
        roles.delete_role(cp, actor, role_name)
    click.echo(f"deleted role {role_name}")


@role.command("unassign")
@click.argument("role_name")
@click.argument("user")
@click.pass_context
def role_unassign(ctx, role_name, user):
    """Remove USER from ROLE_NAME."""
    with as_caller(ctx) as (cp, actor):
        roles.unassign_role(cp, actor, role_name, user)
    click.echo(f"user {user} no longer has role {role_name}")


@role.command("unlease")
@click.argument("role_name")
@click.argument("datasource")
@click.argument("credential_name")
@click.pass_context
def role_unlease(ctx, role_name, datasource, credential_name):
    """Stop ROLE_NAME leasing DATASOURCE CREDENTIAL_NAME."""
    with as_caller(ctx) as (cp, actor):
        roles.unlease(cp, actor, role_name, datasource, credential_name)
    click.echo(f"role {role_name} no longer leases {datasource}/{credential_name}")


@role.command("list")
@json_option
@click.pass_context
def role_list(ctx, as_json):
    """List roles with their members and leases."""
    with as_caller(ctx) as (cp, actor):
        emit(roles.list_roles(cp, actor), as_json, ["role", "members", "leases"])


# --- user ---------------------------------------------------------------------------------

@click.group()
def user() -> None:
    """Users and their API keys."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.pass_context
def user_add(ctx, name, admin):
    """Add user NAME (then give them a key with `sdm user key NAME`)."""
    with as_caller(ctx) as (cp, actor):
        users.add_user(cp, actor, name, is_admin=admin)
    click.echo(f"added {'admin ' if admin else ''}user {name}")


@user.command("key")
@click.argument("name")
@click.pass_context
def user_key(ctx, name):
    """Print a new API key for NAME. It is shown once and cannot be recovered."""
    with as_caller(ctx) as (cp, actor):
        click.echo(users.create_api_key(cp, actor, name))


@user.command("remove")
@click.argument("name")
@click.pass_context
def user_remove(ctx, name):
    """Remove user NAME with their keys, sessions, grants and role memberships."""
    with as_caller(ctx) as (cp, actor):
        users.remove_user(cp, actor, name)
    click.echo(f"removed user {name}")


@user.command("revoke-key")
@click.argument("prefix")
@click.pass_context
def user_revoke_key(ctx, prefix):
    """Revoke an API key by its prefix (the API_KEYS column of `sdm user list`), with the sessions
    it created and the keys it minted for its user."""
    with as_caller(ctx) as (cp, actor):
        out = users.revoke_api_key(cp, actor, prefix)
    also = []
    if out["keys_revoked"]:
        also.append(f"{len(out['keys_revoked'])} key(s) it minted ({', '.join(out['keys_revoked'])})")
    if out["sessions_revoked"]:
        also.append(f"{out['sessions_revoked']} session(s) it created")
    click.echo(f"revoked API key {prefix} of {out['user']}" + (f", and {' and '.join(also)}" if also else ""))


@user.command("list")
@json_option
@click.pass_context
def user_list(ctx, as_json):
    """List users."""
    with as_caller(ctx) as (cp, actor):
        emit(users.list_users(cp, actor), as_json, ["name", "admin", "roles", "api_keys"])


# --- grant --------------------------------------------------------------------------------

class _GrantGroup(click.Group):
    """``sdm grant USER DS CRED --for 2h`` is short for ``sdm grant create ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_GrantGroup)
def grant() -> None:
    """Temporary access: `sdm grant USER DATASOURCE CREDENTIAL --for 2h`, `revoke`, `list`."""


@grant.command("create")
@click.argument("user_name")
@click.argument("datasource")
@click.argument("credential_name")
@click.option("--for", "duration", required=True, help="How long, e.g. 30m, 2h, 1d.")
@json_option
@click.pass_context
def grant_create(ctx, user_name, datasource, credential_name, duration, as_json):
    """Let USER connect as DATASOURCE CREDENTIAL for a while."""
    ttl = parse_duration(duration)
    with as_caller(ctx) as (cp, actor):
        emit(grants.create_grant(cp, actor, user_name, datasource, credential_name, ttl), as_json)


@grant.command("revoke")
@click.argument("user_name")
@click.argument("datasource")
@click.argument("credential_name")
@click.pass_context
def grant_revoke(ctx, user_name, datasource, credential_name):
    """End USER's active grants on DATASOURCE CREDENTIAL now."""
    with as_caller(ctx) as (cp, actor):
        out = grants.revoke_grants(cp, actor, user_name, datasource, credential_name)
    click.echo(f"revoked {out['revoked']} grant(s) of {user_name} on {datasource}/{credential_name}")


@grant.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include expired and revoked grants.")
@json_option
@click.pass_context
def grant_list(ctx, include_ended, as_json):
    """List active grants."""
    with as_caller(ctx) as (cp, actor):
        emit(grants.list_grants(cp, actor, include_ended=include_ended), as_json,
             ["id", "user", "datasource", "credential", "expires_at", "state", "created_by"])


# --- proxy --------------------------------------------------------------------------------

@click.group()
def proxy() -> None:
    """Enrolled proxy instances (gateways allowed to ask for unlocks)."""


@proxy.command("enroll")
@click.argument("public_key_b64")
@click.pass_context
def proxy_enroll(ctx, public_key_b64):
    """Enrol a proxy by its base64 Ed25519 public key (`sdm gateway` enrols itself)."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except ValueError:
        raise UsageError("PUBLIC_KEY_B64 must be base64") from None
    with as_caller(ctx) as (cp, actor):
        click.echo(proxies.enroll_proxy(cp, actor, raw)["id"])


@proxy.command("list")
@json_option
@click.pass_context
def proxy_list(ctx, as_json):
    """List enrolled proxies."""
    with as_caller(ctx) as (cp, actor):
        emit(proxies.list_proxies(cp, actor), as_json)


@proxy.command("revoke")
@click.argument("proxy_id")
@click.pass_context
def proxy_revoke(ctx, proxy_id):
    """Revoke a proxy's enrollment: its unlock requests are refused from now on."""
    with as_caller(ctx) as (cp, actor):
        proxies.revoke_proxy(cp, actor, proxy_id)
    click.echo(f"revoked proxy {proxy_id}")


GROUPS = [datasource, credential, role, user, grant, proxy]
