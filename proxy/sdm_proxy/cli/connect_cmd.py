"""``sdm connect``: connection settings for psql, DBeaver or a script, with a fresh session token.

The token stands in for a password; the database's own password is never shown. When the
listener is not on loopback, the settings ask the client to verify the gateway's certificate
against ``$SDM_HOME/tls/ca.pem`` before it sends the token (PostgreSQL ``sslmode=verify-full``,
MySQL ``ssl-mode=VERIFY_IDENTITY``).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from urllib.parse import quote, urlencode

import click

from ..control import sessions
from ..control.access import usable_credentials
from ..errors import AccessDenied, NotFound, StateError
from ..validation import parse_duration, parse_host_port
from ..tls import certificate_names
from ..wire.net import is_loopback
from .common import as_caller

SCHEMES = {"postgres": "postgresql", "mysql": "mysql"}
# The TLS settings by protocol, as each one's clients spell them: (mode key, CA key, verify, encrypt only)
TLS_KEYS = {"postgres": ("sslmode", "sslrootcert", "verify-full", "require"),
            "mysql": ("ssl_mode", "ssl_ca", "VERIFY_IDENTITY", "REQUIRED")}


def _listener_address(home, kind: str) -> tuple[str, int]:
    env = os.environ.get(f"SDM_GATEWAY_{kind.upper()}")
    if env:
        return parse_host_port(env)
    try:
        addresses = json.loads(home.gateway_info_path.read_text())
    except (OSError, ValueError):
        raise StateError(f"no running gateway found ({home.gateway_info_path} is missing): start "
                         f"`sdm gateway`, or set SDM_GATEWAY_{kind.upper()}=HOST:PORT") from None
    if kind not in addresses:
        raise StateError(f"the running gateway has no {kind} listener")
    host, port = parse_host_port(addresses[kind])
    if is_loopback(host) and not _listening(host, port):
        # A gateway removes gateway.json when it stops; one that was killed (kill -9, a crash)
        # leaves it, and the settings printed would lead nowhere.
        raise StateError(f"no gateway listens on {host}:{port} ({home.gateway_info_path} is left from one "
                         "that stopped without removing it): start `sdm gateway`")
    return host, port


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host.strip("[]"), port), timeout=1.0).close()
    except OSError:
        return False
    return True


@click.command()
@click.argument("datasource")
@click.option("--as", "credential", default=None, help="The credential to log in as (default: your only one).")
@click.option("--format", "fmt", type=click.Choice(["url", "env", "json"]), default="url", show_default=True)
@click.option("--ttl", default="1h", show_default=True, help="Lifetime of the session token in it.")
@click.pass_context
def connect(ctx, datasource, credential, fmt, ttl):
    """Print how to connect to DATASOURCE through the gateway (a session token is the password)."""
    lifetime = parse_duration(ttl)
    with as_caller(ctx) as (cp, actor):
        with cp.db.transaction() as s:
            usable = usable_credentials(s, actor.user_id, actor.name, cp.now(), datasource)
        if not usable:
            raise AccessDenied(f"user {actor.name} has no lease or grant on datasource {datasource}")
        names = [c.name for c, _ in usable]
        if credential is None and len(names) > 1:
            raise AccessDenied(f"you hold several credentials on {datasource}; pick one with --as: {', '.join(names)}")
        if credential is not None and credential not in names:
            raise NotFound(f"you hold no credential {credential!r} on {datasource} (yours: {', '.join(names)})")
        cred = next(c for c, _ in usable if c.name == (credential or names[0]))
        kind = cred.datasource.type
        host, port = _listener_address(cp.home, kind)
        token = sessions.create_session(cp, actor, lifetime)["token"]
    user = cred.name
    settings = {"host": host, "port": port, "database": datasource, "user": user, "password": token}
    tls = _tls_settings(cp.home, host, kind)
    settings.update(tls)
    if fmt == "json":
        click.echo(json.dumps(settings, indent=2))
    elif fmt == "env":
        if kind == "postgres":
            for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("database", "PGDATABASE"),
                             ("user", "PGUSER"), ("password", "PGPASSWORD"), ("sslmode", "PGSSLMODE"),
                             ("sslrootcert", "PGSSLROOTCERT")):
                if key in settings:
                    click.echo(f"export {var}={shlex.quote(str(settings[key]))}")
        else:
            for key in ("host", "port", "database", "user", "password", "ssl_mode", "ssl_ca"):
                if key in settings:
                    click.echo(f"export SDM_MYSQL_{key.upper()}={shlex.quote(str(settings[key]))}")
    else:
        query = f"?{urlencode(_url_options(tls, kind), quote_via=quote)}" if tls else ""  # %20, never +
        netloc_host = f"[{host}]" if ":" in host else host  # IPv6
        click.echo(f"{SCHEMES[kind]}://{quote(user, safe='')}:{quote(token, safe='')}@{netloc_host}:{port}/"
                   f"{quote(datasource, safe='')}{query}")


def _url_options(tls: dict[str, str], kind: str) -> dict[str, str]:
    """MySQL's URI-like connection strings spell the options with dashes (ssl-mode, ssl-ca)."""
    return {key.replace("_", "-"): value for key, value in tls.items()} if kind == "mysql" else tls


def _tls_settings(home, host: str, kind: str) -> dict[str, str]:
    """Off loopback the listener requires TLS; the client should also check it is the gateway."""
    if is_loopback(host) or host in ("0.0.0.0", "::", "[::]"):  # a wildcard listener: reached here locally
        return {}
    mode, ca_key, verify, encrypt_only = TLS_KEYS[kind]
    ca, cert = home.tls_dir / "ca.pem", home.tls_dir / "gateway.pem"
    if not ca.is_file():
        return {mode: encrypt_only}
    if cert.is_file() and host.strip("[]") not in certificate_names(cert):
        # Verification would fail: a home from before `sdm init --tls-name`, or another address.
        click.echo(f"sdm connect: warning: the gateway's certificate does not name {host}, so clients cannot "
                   "verify it; they get TLS without verification (an admin adds the name with "
                   f"`sdm tls reissue --tls-name {host.strip('[]')}`, then restarts the gateway)", err=True)
        return {mode: encrypt_only}
    return {mode: verify, ca_key: str(ca)}
