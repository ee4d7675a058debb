"""``sdm gateway``: run the gateway in the foreground."""

from __future__ import annotations

import logging

import click

from ..errors import UsageError
from ..validation import parse_host_port
from .common import control_plane


@click.command()
@click.option("--api", "api_addr", default="127.0.0.1:8471", show_default=True,
              help="HOST:PORT of the control API.")
@click.option("--postgres", "pg_addr", default=None, help="HOST:PORT of the PostgreSQL listener.")
@click.option("--mysql", "mysql_addr", default=None, help="HOST:PORT of the MySQL listener.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def gateway(ctx, api_addr, pg_addr, mysql_addr, verbose):
    """Run the gateway in the foreground; SIGTERM drains and stops it."""
    for flag, value in (("--postgres", pg_addr), ("--mysql", mysql_addr)):
        if value is not None:
            raise UsageError(f"{flag}: this sdm version has no wire listeners yet (control API only)")
    host, port = parse_host_port(api_addr)
    from ..gateway import GatewayConfig, enrol_local_proxy, run  # FastAPI/uvicorn load only here
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    with control_plane(ctx) as cp:
        identity = enrol_local_proxy(cp)
        click.echo(f"sdm gateway: proxy {identity.proxy_id}; control API on http://{host}:{port}", err=True)
        run(cp, GatewayConfig(api_host=host, api_port=port), identity)
