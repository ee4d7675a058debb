"""Entry point of the ``sdm`` command.

Exit codes: 0 success, 1 refused (not found, denied, conflict, state or vault errors), 2 usage.
Every deliberate error is one line on stderr: ``sdm: error: <message>``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from .. import __version__
from ..errors import SdmError
from .admin_cmds import GROUPS
from .audit_cmds import audit
from .common import home_from
from .connect_cmd import connect
from .gateway_cmd import gateway
from .key_cmds import master_key
from .tls_cmds import tls
from .session_cmds import session


def _plugin_entry_points() -> dict:
    """Commands other distributions register under the ``sdm.commands`` entry-point group (the
    notebook side adds ``sdm demo`` this way, keeping the one join of both sides in one place)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="sdm.commands")}


class _SdmGroup(click.Group):
    """Loads a plugin command only when it is the one being run (or help lists it)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_plugin_entry_points()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = _plugin_entry_points().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break other commands
            raise click.ClickException(f"command {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}")


@click.group(cls=_SdmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="SDM_HOME", default=None, help="State directory (default ~/.sdm).")
@click.version_option(__version__, prog_name="sdm")
@click.pass_context
def cli(ctx, home):
    """sdm: a credential-injecting data-access gateway."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


@cli.command()
@click.option("--database-url", default=None, envvar="SDM_DATABASE_URL",
              help="State database (default SQLite in $SDM_HOME); or SDM_DATABASE_URL, which keeps a "
                   "password in it out of `ps` and the shell history.")
@click.option("--kms-key-id", default=None, help="Wrap data keys with this AWS KMS key instead of a local key.")
@click.option("--admin-name", default="admin", show_default=True, help="Name of the first admin user.")
@click.option("--tls-name", "tls_names", multiple=True, metavar="NAME",
              help="A DNS name or IP address clients use to reach the gateway over a network, added to its "
                   "TLS certificate (repeatable; localhost, this host's name and loopback are always in it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init(ctx, database_url, kms_key_id, admin_name, tls_names, as_json):
    """Create state, keys, a CA and the first admin (its API key is saved in $SDM_HOME/admin.key)."""
    from ..control.bootstrap import init_home  # alembic and the CA code load only here

    result = init_home(home_from(ctx), database_url=database_url, kms_key_id=kms_key_id,
                       admin_name=admin_name, tls_names=tuple(tls_names))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"initialised {result['home']} (state {result['database_url']}, "
                   f"keys: {result['key_provider']}); admin {result['admin']}'s API key is in "
                   f"{result['admin_key_file']}")


@cli.command()
@click.pass_context
def migrate(ctx):
    """Upgrade the state database to this sdm version's schema (safe to run twice)."""
    from ..control.db import make_engine, upgrade

    home = home_from(ctx)
    engine = make_engine(home.load_config()["database_url"], create=True)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    click.echo("state database is at the newest schema")


for _group in (*GROUPS, session, audit, gateway, master_key, connect, tls):
    cli.add_command(_group)




def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="sdm: %(levelname)s: %(message)s")
    try:
        cli.main(args=argv, prog_name="sdm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("sdm: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SdmError as exc:
        click.echo(f"sdm: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except UnicodeError:
        # An argument with bytes this locale cannot decode. The codec error holds the whole text
        # (a password, say): only this line goes out.
        click.echo("sdm: error: an argument or input is not valid text (UTF-8 expected)", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        if os.environ.get("SDM_DEBUG"):
            raise
        # Only the type: a driver's message can quote a connection string.
        what = type(exc).__name__
        if type(exc).__module__.startswith("sqlalchemy"):
            click.echo(f"sdm: error: the state database failed ({what}): check --database-url or $SDM_HOME/"
                       "config.json and that the database is up; set SDM_DEBUG=1 for the traceback", err=True)
        else:
            click.echo(f"sdm: error: unexpected {what}; set SDM_DEBUG=1 for the traceback", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
