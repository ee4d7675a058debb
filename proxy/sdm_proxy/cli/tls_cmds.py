"""``sdm tls``: the gateway's listener certificate (what it names, and reissuing it)."""

from __future__ import annotations

import click

from ..control.gateway_tls import describe_gateway_tls, reissue_gateway_tls
from .common import as_caller, emit, home_from, json_option


@click.group("tls")
def tls() -> None:
    """The gateway's TLS certificate (clients verify it against $SDM_HOME/tls/ca.pem)."""


@tls.command("show")
@json_option
@click.pass_context
def tls_show(ctx, as_json):
    """Show the names the gateway's certificate holds, its expiry and fingerprints."""
    emit(describe_gateway_tls(home_from(ctx)), as_json)


@tls.command("reissue")
@click.option("--tls-name", "add", multiple=True, metavar="NAME",
              help="Add a DNS name or IP address clients use to reach the gateway (repeatable).")
@click.option("--drop-name", "drop", multiple=True, metavar="NAME",
              help="Remove a name added before (repeatable; this machine and loopback always stay).")
@json_option
@click.pass_context
def tls_reissue(ctx, add, drop, as_json):
    """Issue a new gateway key and certificate from the same CA: the current names plus --tls-name,
    minus --drop-name, valid for 825 days from now. Clients keep trusting ca.pem; restart the gateway
    to serve the new certificate."""
    with as_caller(ctx) as (cp, actor):
        result = reissue_gateway_tls(cp, actor, add=tuple(add), drop=tuple(drop))
    emit(result, as_json)
    if not as_json:
        click.echo("restart the gateway (sdm gateway) to serve the new certificate", err=True)
