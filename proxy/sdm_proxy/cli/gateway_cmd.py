"""``sdm gateway``: run the gateway in the foreground."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import click

from ..errors import UsageError
from ..validation import parse_host_port
from ..wire.login_slots import DEFAULT_PER_ADDRESS, MAX_PER_ADDRESS
from ..wire.login_throttle import DEFAULT_LIMIT, MAX_LIMIT
from .common import control_plane


def _listener(value: str) -> tuple[str, int] | None:
    if value.strip().lower() == "off":
        return None
    return parse_host_port(value)


def _hub_api_url(option: str | None, environ) -> str | None:
    """--jupyterhub-api-url, or the hub's own JUPYTERHUB_API_URL when the hub runs us as a service.
    Plain http is allowed: it is how hubs reach their own API inside a deployment (``http://hub:8081``),
    and the single-user servers already send the same tokens that way."""
    url = option or (environ.get("JUPYTERHUB_API_URL") if environ.get("JUPYTERHUB_SERVICE_NAME") else None)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid JupyterHub API URL {url!r}: expected http(s)://HOST[:PORT]/hub/api")
    if parts.username is not None or parts.password is not None:
        raise UsageError("invalid JupyterHub API URL: no user or password in it (the gateway sends each "
                         "user's own token to the hub)")
    return url.rstrip("/")


@click.command()
@click.option("--api", "api_addr", default="127.0.0.1:8471", show_default=True,
              help="HOST:PORT of the control API.")
@click.option("--postgres", "pg_addr", default="127.0.0.1:15432", show_default=True,
              help="HOST:PORT of the PostgreSQL listener, or `off`. Off loopback it requires TLS.")
@click.option("--mysql", "mysql_addr", default="127.0.0.1:13306", show_default=True,
              help="HOST:PORT of the MySQL listener, or `off`. Off loopback it requires TLS.")
@click.option("--audit-sync", type=click.Choice(["write", "fsync", "commit"]), default="write", show_default=True,
              help="When a statement may run: once its audit event is written to the spool (survives a "
                   "gateway crash), fsynced (survives power loss), or committed to the chain (slowest).")
@click.option("--audit-chainer", type=click.Choice(["thread", "process"]), default="thread", show_default=True,
              help="Where spooled audit events are chained into the log: a thread of the gateway's "
                   "process, or a process of their own (more audited statements per second where a "
                   "core is spare; 14-23 MB more memory).")
@click.option("--warm-logins/--no-warm-logins", default=True, show_default=True,
              help="PostgreSQL: keep one logged-in spare connection per recently used credential (made "
                   "with cached SCRAM keys, used by one session only, closed after 30 s idle) so the next "
                   "connect skips the database's fork and login.")
@click.option("--login-failure-limit", type=click.IntRange(0, MAX_LIMIT), default=DEFAULT_LIMIT, show_default=True,
              help="Failed logins per client address (not loopback) and minute after which that address's "
                   "logins without a valid session token are refused for a minute, with one audit event "
                   "for the whole throttle instead of one each; 0 turns it off.")
@click.option("--max-logins-per-address", type=click.IntRange(1, MAX_PER_ADDRESS), default=DEFAULT_PER_ADDRESS,
              show_default=True,
              help="Connections from one client address (not loopback) that may be logging in at once; "
                   "past it, that address's next connections are refused until one finishes, so one host "
                   "cannot hold every connection slot through the 60 s login timeout.")
@click.option("--jupyterhub-api-url", metavar="URL", default=None,
              help="Take JupyterHub users' API tokens (JUPYTERHUB_API_TOKEN in their kernels) to create "
                   "sessions for the sdm user of the same name, asking this hub (e.g. "
                   "http://127.0.0.1:8081/hub/api) who each token belongs to. Default: JUPYTERHUB_API_URL "
                   "when the gateway runs as a hub service, else off.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def gateway(ctx, api_addr, pg_addr, mysql_addr, audit_sync, audit_chainer, warm_logins, login_failure_limit,
            max_logins_per_address, jupyterhub_api_url, verbose):
    """Run the gateway in the foreground; SIGTERM drains and stops it."""
    host, port = parse_host_port(api_addr)
    hub_url = _hub_api_url(jupyterhub_api_url, os.environ)
    postgres = _listener(pg_addr)
    mysql = _listener(mysql_addr)
    from ..gateway import (  # FastAPI/uvicorn load only here
        GatewayConfig,
        enrol_local_proxy,
        run,
    )

    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    with control_plane(ctx) as cp:
        identity = enrol_local_proxy(cp)
        where = f"control API on http://{host}:{port}"
        if postgres:
            where += f", PostgreSQL on {postgres[0]}:{postgres[1]}"
        if mysql:
            where += f", MySQL on {mysql[0]}:{mysql[1]}"
        if hub_url:
            where += f"; JupyterHub tokens checked with {hub_url}"
        click.echo(f"sdm gateway: proxy {identity.proxy_id}; {where}", err=True)
        run(cp, GatewayConfig(api_host=host, api_port=port, postgres=postgres, mysql=mysql,
                                         audit_sync=audit_sync, audit_chainer=audit_chainer,
                                         warm_logins=warm_logins, login_failure_limit=login_failure_limit,
                                         logins_per_address=max_logins_per_address,
                                         jupyterhub_api_url=hub_url),
            identity)
