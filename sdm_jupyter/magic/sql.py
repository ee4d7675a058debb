"""``%sdm sql`` / ``%%sdm sql``: run a statement through the gateway into a pandas DataFrame.

    %sdm sql DATASOURCE [--as CREDENTIAL] [-o NAME] [--limit N] SELECT ...
    %%sdm sql DATASOURCE [--as CREDENTIAL] [-o NAME] [--limit N]
    SELECT ... WHERE id = :customer_id

``:name`` takes the value of ``name`` from the notebook as a real bind parameter (the database
receives it separately from the statement), so a value full of SQL stays a value. Write ``\\:`` for a
literal colon before a word. Interrupting the kernel cancels the statement on the database.
"""

from __future__ import annotations

from IPython.core.error import UsageError

from ..db import Progress, bind_names, resolve_credential, run_statement
from . import _args

OPTIONS = {
    "--as": _args.Option("credential", str, "CREDENTIAL"),
    "-o": _args.Option("output", _args.identifier, "NAME"),
    "--out": _args.Option("output", _args.identifier, "NAME"),
    "--limit": _args.Option("limit", _args.positive_int, "N"),
}
USAGE = "%sdm sql DATASOURCE [--as CREDENTIAL] [-o NAME] [--limit N] QUERY (or the query in a %%sdm sql cell)"


def run(magics, line: str, cell: str | None):
    parsed = _args.parse(line, OPTIONS, positionals=1, usage=USAGE, rest=cell is None)
    if not parsed.positionals:
        raise UsageError(f"which datasource? usage: {USAGE} (see `%sdm ls`)")
    datasource = parsed.positionals[0]
    query = (cell if cell is not None else parsed.rest).strip()
    if not query or query == ";":
        raise UsageError(f"no query to run: write it after the datasource, or in the cell under %%sdm sql {datasource}")

    namespace = magics.shell.user_ns if magics.shell is not None else {}
    values = {}
    for name in bind_names(query):
        if name not in namespace:
            raise UsageError(f":{name} has no value: define `{name}` in the notebook first "
                             "(write \\: for a literal colon)")
        values[name] = namespace[name]

    client = magics.client
    row = resolve_credential(client.datasources(), datasource, parsed.options.get("credential"))
    if row.get("type") not in (None, "postgres"):
        raise UsageError(f"{datasource} is a {row.get('type')} datasource: this version of %sdm sql speaks "
                         "PostgreSQL only")
    credential = row["credential"]
    limit = parsed.options.get("limit") or (magics.limit if magics.limit > 0 else None)
    engine = magics.engine(datasource, credential)
    progress = Progress(f"{datasource} as {credential}", after=magics.progress_after, enabled=magics.progress)
    try:
        result = run_statement(engine, query, values, tags=magics.context.tags(), datasource=datasource,
                               address=client.postgres_address(), limit=limit, fetch_size=magics.fetch_size,
                               progress=progress, columnar=magics.columnar)
    finally:
        progress.done()

    frame = result.frame()
    if frame is None:
        if magics.summary:
            affected = f" ({result.rowcount:,} rows affected)" if (result.rowcount or -1) >= 0 else ""
            print(f"{datasource} as {credential}: {result.status or 'OK'}{affected}")
        return None
    if parsed.options.get("output"):
        namespace[parsed.options["output"]] = frame
    if magics.summary:
        rows, cols = frame.shape
        # Several statements in one cell go through libpq whole (review: the line said the rest
        # was not fetched while all of it had been, and held in memory).
        rest = "the whole result was fetched: several statements" if getattr(result, "fetched_whole", False) \
            else "the rest was not fetched"
        what = f"first {rows:,} rows (limit {limit:,} reached; {rest})" if result.truncated \
            else f"{rows:,} row{'s' if rows != 1 else ''}"
        saved = f", saved as {parsed.options['output']}" if parsed.options.get("output") else ""
        print(f"{what} × {cols} column{'s' if cols != 1 else ''} from {datasource} as {credential}{saved}")
    return frame
