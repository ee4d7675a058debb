"""Shared CLI plumbing: opening the state, finding the caller, printing, reading secrets."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

import click

from ..control.context import Actor, ControlPlane
from ..control.users import authenticate_api_key
from ..errors import AuthenticationFailed, UsageError
from ..home import SdmHome
from ..vault.secret import SecretValue

MAX_STDIN_SECRET = 4096


def home_from(ctx: click.Context) -> SdmHome:
    return SdmHome.from_env(ctx.obj.get("home") if ctx.obj else None)


@contextmanager
def control_plane(ctx: click.Context) -> Iterator[ControlPlane]:
    cp = ControlPlane.open(home_from(ctx))
    try:
        yield cp
    finally:
        cp.close()


def caller_api_key(home: SdmHome) -> str:
    """``SDM_API_KEY`` first, then the admin key ``sdm init`` saved in $SDM_HOME."""
    key = os.environ.get("SDM_API_KEY", "").strip()
    if key:
        return key
    try:
        return home.admin_key_path.read_text().strip()
    except OSError:
        raise AuthenticationFailed(
            f"no API key: set SDM_API_KEY or keep the admin key in {home.admin_key_path}") from None


@contextmanager
def as_caller(ctx: click.Context) -> Iterator[tuple[ControlPlane, Actor]]:
    with control_plane(ctx) as cp:
        yield cp, authenticate_api_key(cp, caller_api_key(cp.home))


def read_secret_from_stdin() -> SecretValue:
    """One secret from stdin; one trailing newline is dropped (``echo pw |`` and files both work)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("--password-stdin reads the password from a pipe or file, not a terminal")
    data = sys.stdin.buffer.read(MAX_STDIN_SECRET + 2)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > MAX_STDIN_SECRET:
        raise UsageError(f"password on stdin is longer than {MAX_STDIN_SECRET} bytes")
    return SecretValue(data)


def emit(data, as_json: bool, columns: Iterable[str] | None = None) -> None:
    """Print a list of dicts as JSON or as an aligned table, or a dict as JSON / key: value lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    if isinstance(data, dict):
        for key, value in data.items():
            click.echo(f"{key}: {_cell(value)}")
        return
    rows = list(data)
    if not rows:
        click.echo("(none)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


_CONTROL = dict.fromkeys([*range(0, 32), 127, *range(128, 160)], "?")


def printable(text: str) -> str:
    """Control characters from stored data (a hostile user or datasource name) could drive the
    admin's terminal; show them as '?'."""
    return text.translate(_CONTROL)


def _cell(value) -> str:
    return printable(_cell_text(value))


def _cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
