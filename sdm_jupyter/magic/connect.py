"""``%sdm connect DATASOURCE [--as CREDENTIAL]``: a SQLAlchemy Engine through the gateway.

The engine logs in with the credential's name and the kernel's session token (fetched at each new
connection, so renewals are picked up); every statement it sends carries the cell's tags, so
``pandas.read_sql(query, engine)`` and plain SQLAlchemy code are attributed like the magic.
"""

from __future__ import annotations

from ..db import database_error, resolve_credential
from . import _args

OPTIONS = {"--as": _args.Option("credential", str, "CREDENTIAL")}
USAGE = "%sdm connect DATASOURCE [--as CREDENTIAL]"


def run(magics, line: str, cell: str | None):
    from IPython.core.error import UsageError

    parsed = _args.parse(line, OPTIONS, positionals=1, usage=USAGE)
    if not parsed.positionals:
        raise UsageError(f"which datasource? usage: {USAGE} (see `%sdm ls`)")
    if (cell or "").strip():
        raise UsageError(f"%%sdm connect takes no cell body; usage: {USAGE}")
    datasource = parsed.positionals[0]
    row = resolve_credential(magics.client.datasources(), datasource, parsed.options.get("credential"))
    engine = magics.engine(datasource, row["credential"])
    try:  # fail now, in one line, rather than at first use; the connection goes back to the pool
        engine.connect().close()
    except Exception as exc:  # noqa: BLE001
        raise database_error(exc, datasource=datasource, address=magics.client.postgres_address()) from None
    return engine
