"""``sdm master-key``: the local master keys that wrap every credential's data key."""

from __future__ import annotations

import click

from ..control.master_keys import list_master_keys, rotate_master_key
from .common import as_caller, emit, json_option


@click.group("master-key")
def master_key() -> None:
    """Local master keys (the embedded default key provider)."""


@master_key.command("list")
@json_option
@click.pass_context
def master_key_list(ctx, as_json):
    """List master key ids (newest wraps new secrets) and how many credentials each wraps."""
    with as_caller(ctx) as (cp, actor):
        emit(list_master_keys(cp, actor), as_json, ["id", "wraps_new_secrets", "sealed_credentials"])


@master_key.command("rotate")
@click.option("--reseal", is_flag=True, help="Also re-wrap every sealed credential with the new key.")
@json_option
@click.pass_context
def master_key_rotate(ctx, reseal, as_json):
    """Add a new master key that wraps from now on; old keys still open what they sealed."""
    with as_caller(ctx) as (cp, actor):
        emit(rotate_master_key(cp, actor, reseal_all=reseal), as_json)
