"""``sdm audit``: read, verify and export the tamper-evident log."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from ..audit.verify import verify_db, verify_jsonl
from .common import as_caller, printable


@click.group()
def audit() -> None:
    """The audit log."""


def _line(event: dict) -> str:
    parts = [event.get("ts", ""), event.get("type", ""), event.get("user") or "-"]
    for key in ("datasource", "credential", "status"):
        if event.get(key):
            parts.append(f"{key}={event[key]}")
    if event.get("error"):
        parts.append(f"error={event['error']}")
    if event.get("query"):
        parts.append(f"query={event['query'][:120]!r}")
    if event.get("details"):
        parts.append(json.dumps(event["details"], sort_keys=True))
    return printable("  ".join(str(p) for p in parts))


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_context
def audit_tail(ctx, count, as_json):
    """Show the newest events (admin only)."""
    with as_caller(ctx) as (cp, actor):
        actor.require_admin("reading the whole audit log")
        events = [e.to_dict() for e in cp.audit.tail(count)]
    for event in events:
        click.echo(json.dumps(event, sort_keys=True) if as_json else _line(event))


@audit.command("verify")
@click.option("--file", "jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Verify a shipped JSON-lines copy instead of the state database.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (ok, events, checkpoints, first_bad_seq, first_bad_id, problem).")
@click.pass_context
def audit_verify(ctx, jsonl, as_json):
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad event."""
    with as_caller(ctx) as (cp, actor):
        actor.require_admin("verifying the audit log")
        public_key = cp.audit.signer.public_key
        if jsonl:
            # The home's own sink must reach the database's head; a shipped copy may be older.
            own_sink = jsonl.resolve() == cp.home.audit_jsonl_path.resolve()
            report = verify_jsonl(jsonl, public_key, expect_head=cp.audit.head() if own_sink else None)
        else:
            report = verify_db(cp.db, public_key, expect_checkpoint_every=cp.audit.checkpoint_every)
    click.echo(json.dumps(dataclasses.asdict(report)) if as_json else report.summary())
    if not report.ok:
        sys.exit(1)


@audit.command("checkpoint")
@click.pass_context
def audit_checkpoint(ctx):
    """Sign the log's current head now (the gateway also does this as it stops)."""
    with as_caller(ctx) as (cp, actor):
        actor.require_admin("signing an audit checkpoint")
        checkpoint = cp.audit.checkpoint()
    click.echo("audit log is empty" if checkpoint is None
               else f"signed checkpoint at event {checkpoint.seq} ({checkpoint.hash[:16]}…)")


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.pass_context
def audit_export(ctx, fmt):
    """Write every event, oldest first, to stdout."""
    with as_caller(ctx) as (cp, actor):
        actor.require_admin("exporting the audit log")
        cp.audit.export_jsonl(sys.stdout)
