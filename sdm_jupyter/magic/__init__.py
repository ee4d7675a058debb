"""``%sdm`` / ``%%sdm``: the analyst's side of the gateway (DESIGN §4 Magic).

One module per sub-command (``ls``, ``whoami``, ``activity``, ``sql``, ``connect``); this module only
holds the configurable state and dispatches. Every error is one line (``UsageError``), never a
traceback, and never shows a token.

    %config SdmMagics.limit = 1000          # default row limit for %sdm sql (0: none)
    %config SdmMagics.gateway_url = "https://gateway:8471"
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Integer, Unicode, observe
from traitlets.config import Configurable

from ..attribution import CellContext
from ..errors import SdmClientError
from ..gateway_client import GatewayClient, GatewayConfig
from . import activity, connect, ls, sql, whoami

COMMANDS: dict[str, Callable[["SdmMagics", str, str | None], Any]] = {
    "ls": ls.run,
    "whoami": whoami.run,
    "activity": activity.run,
    "sql": sql.run,
    "connect": connect.run,
}
USAGE = ("usage: %sdm ls | whoami | activity [-n N] | sql DATASOURCE [--as CREDENTIAL] [-o NAME] [--limit N] "
         "QUERY | connect DATASOURCE [--as CREDENTIAL]")


@magics_class
class SdmMagics(Magics, Configurable):
    """The ``%sdm`` magic. Options below are set with ``%config SdmMagics.<name> = <value>``."""

    gateway_url = Unicode(None, allow_none=True, help=(
        "URL of the gateway's control API (default: SDM_GATEWAY_URL, $SDM_HOME, http://127.0.0.1:8471)")
    ).tag(config=True)
    postgres_address = Unicode(None, allow_none=True, help=(
        "HOST:PORT of the gateway's PostgreSQL listener (default: SDM_GATEWAY_POSTGRES, the gateway's "
        "announcement, 127.0.0.1:15432)")).tag(config=True)
    session_ttl = Unicode("1h", help="Lifetime of the kernel's gateway session; it is renewed before it ends."
                          ).tag(config=True)
    limit = Integer(0, help="Default row limit of %sdm sql (0: no limit); --limit overrides it.").tag(config=True)
    fetch_size = Integer(10_000, help="Rows per network chunk while fetching.").tag(config=True)
    columnar = Bool(True, help=(
        "Build %sdm sql DataFrames column by column, from binary PostgreSQL results where they are exact: "
        "the same DataFrame as row by row, in about half the time. False: row by row.")).tag(config=True)
    progress = Bool(True, help="Show a progress line for fetches that take longer than progress_after.").tag(
        config=True)
    progress_after = Float(1.0, help="Seconds before the progress line appears.").tag(config=True)
    summary = Bool(True, help="Print the row count (and credential) after each %sdm sql.").tag(config=True)
    sslmode = Unicode("prefer", help="libpq sslmode towards the gateway's listener.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.context = CellContext(shell)
        self._client: GatewayClient | None = None
        self._engines: dict[tuple, Any] = {}

    # shared state ------------------------------------------------------------------------------
    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            config = GatewayConfig.discover(url=self.gateway_url or None)
            if self.postgres_address:
                from ..gateway_client import parse_address

                config = replace(config, postgres=parse_address(self.postgres_address,
                                                                "SdmMagics.postgres_address"))
            self._client = GatewayClient(config, ttl=self.session_ttl)
        return self._client

    @observe("gateway_url", "postgres_address", "session_ttl", "sslmode")
    def _reset(self, change) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the session and dispose of every engine (after a configuration change)."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        if self._client is not None:
            self._client.close()
        self._client = None

    def engine(self, datasource: str, credential: str):
        from ..db import make_engine

        host, port = self.client.postgres_address()
        key = (datasource, credential, host, port)
        if key not in self._engines:
            client = self.client
            self._engines[key] = make_engine(host=host, port=port, datasource=datasource, credential=credential,
                                             token=client.token, tags=self.context.tags, sslmode=self.sslmode,
                                             ca_file=client.config.ca_file, on_auth_failure=client.invalidate)
        return self._engines[key]

    # the magic ---------------------------------------------------------------------------------
    # no_var_expand: IPython would otherwise format `{expr}` and `$name` into the line before we
    # see it, so a namespace value became SQL text (review: `'{name}'` was an injection, and
    # `$$...$$` or `'{1,2}'` were rewritten). Values go in only as `:name` bind parameters.
    @no_var_expand
    @line_cell_magic
    def sdm(self, line: str, cell: str | None = None):
        """Query databases through the sdm gateway. See `%sdm help`."""
        command, _, rest = line.strip().partition(" ")
        if not command or command in ("help", "-h", "--help"):
            print(USAGE)
            return None
        handler = COMMANDS.get(command)
        if handler is None:
            raise UsageError(f"unknown sub-command {command!r}; {USAGE}")
        try:
            return handler(self, rest.strip(), cell)
        except SdmClientError as exc:
            raise UsageError(str(exc)) from None


def load_ipython_extension(ipython) -> None:
    magics = SdmMagics(shell=ipython, config=ipython.config)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    from .complete import install

    install(ipython, magics)


def unload_ipython_extension(ipython) -> None:
    for magics in [m for m in ipython.configurables if isinstance(m, SdmMagics)]:
        magics.reset()
        ipython.configurables.remove(magics)
