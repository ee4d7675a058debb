"""The column-wise fetch behind ``%sdm sql`` (PostgreSQL): the same statement, much less work per row.

What goes over the wire is what the row path sends (the statement with its tag comment, as an
extended-protocol query, its ``:name`` values as bind parameters), so the gateway audits exactly the
same text and cell. What changes is how the rows become a DataFrame:

1. Describe first. A Parse + Describe of the unnamed statement, with the bind parameters' types
   (nothing runs, so nothing is audited: two short round trips), tells whether the statement
   returns rows and of which types. Statements without rows, several statements in one cell and
   statements PostgreSQL refuses to parse go to the row path, which runs them as before (with the
   same errors).
2. Binary results when every column type is one whose binary value psycopg loads exactly as its
   text (ints, float8, bool, text types, timestamp[tz], date, numeric, uuid, json[b], bytea):
   the server skips text formatting and the client skips parsing. ``timestamp[tz]`` and ``date``
   come as plain integers, so no Python ``datetime`` is ever made. Other types: text results, with
   psycopg's values unchanged.
3. Rows arrive in chunks (``SdmMagics.fetch_size``); each chunk is loaded by psycopg in C and split
   into columns while the next chunk is on the wire (``columnar``). ``--limit`` stops early and
   cancels the rest on the server; Ctrl-C cancels the statement (psycopg sends the CancelRequest).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from operator import itemgetter

from . import columnar

# Types whose binary form psycopg loads to the same Python value as their text form. float8: from
# PostgreSQL 12 on, its text is the shortest exact one (unless a session lowers extra_float_digits,
# when binary stays exact and text rounds); float4 is not (its shortest text is not its binary value).
BINARY_SAFE = frozenset({16, 17, 19, 20, 21, 23, 25, 26, 114, 701, 1042, 1043, 1082, 1114, 1184, 1700,
                         2950, 3802})


@cache  # psycopg does not change under a running kernel: look once, not per statement
def available() -> bool:
    """psycopg still has the internals this relies on (else the row path is used)."""
    try:
        import psycopg
        from psycopg.generators import execute  # noqa: F401

        names = ("_stream_send_gen", "_stream_fetchone_gen", "_query_cls")
        return all(hasattr(psycopg.Cursor, name) for name in names) and hasattr(psycopg.Connection, "wait")
    except ImportError:
        return False


def describe(raw, cur, statement: str, params) -> list[int] | None:
    """Type OIDs of the columns ``statement`` returns; None if it returns none or does not parse."""
    from psycopg import pq
    from psycopg.adapt import Transformer
    from psycopg.generators import execute

    pgconn = raw.pgconn
    ok = pq.ExecStatus.COMMAND_OK
    pgq = cur._query_cls(Transformer(cur))
    pgq.convert(statement, params)  # what the execution sends: $n placeholders and their types
    with raw.lock:
        pgconn.send_prepare(b"", pgq.query, param_types=pgq.types if params is not None else None)
        if any(r.status != ok for r in raw.wait(execute(pgconn))):
            return None  # not one statement PostgreSQL accepts: let the row path run it and report
        pgconn.send_describe_prepared(b"")
        results = raw.wait(execute(pgconn))
    if len(results) != 1 or results[0].status != ok or results[0].nfields == 0:
        return None
    res = results[0]
    return [res.ftype(i) for i in range(res.nfields)]


def fetch(raw, cursor_class, statement: str, params, *, limit: int | None, fetch_size: int,
          progress: Callable[[int], None] | None):
    """Run ``statement`` into a ``ColumnarResult``; None (nothing was run) when the row path should."""
    from psycopg import capabilities

    with cursor_class(raw) as cur:
        oids = describe(raw, cur, statement, params)
        if oids is None:
            return None
        binary = raw.info.server_version >= 120000 and all(oid in BINARY_SAFE for oid in oids)
        if binary:
            from psycopg.types.numeric import Int4BinaryLoader, Int8BinaryLoader

            for oid in (1114, 1184):  # microseconds since 2000-01-01
                cur.adapters.register_loader(oid, Int8BinaryLoader)
            cur.adapters.register_loader(1082, Int4BinaryLoader)  # days since 2000-01-01
        size = max(1, fetch_size)
        return _run(raw, cur, statement, params, binary=binary, size=size if capabilities.has_stream_chunked() else 1,
                    batch=size, limit=limit, progress=progress)


def _run(raw, cur, statement, params, *, binary, size, batch, limit, progress):
    from psycopg import pq

    columns: list[columnar.Column] | None = None
    getters: list[Callable] = []
    pending: list[tuple] = []
    rows = 0
    truncated = False
    first = True

    def flush() -> None:
        for col, get in zip(columns, getters):
            col.add(list(map(get, pending)))
        pending.clear()

    with raw.lock:
        try:
            raw.wait(cur._stream_send_gen(statement, params, binary=binary, size=size))
            while res := raw.wait(cur._stream_fetchone_gen(first)):
                if first:
                    columns, getters = _columns(raw, cur, binary)
                    first = False
                chunk = cur._tx.load_rows(0, res.ntuples, cur._make_row)
                if limit and rows + len(chunk) > limit:
                    chunk, truncated = chunk[: limit - rows], True
                pending.extend(chunk)
                rows += len(chunk)
                if len(pending) >= batch or truncated:
                    flush()
                if progress is not None:
                    progress(rows)
                if truncated:
                    break
        finally:
            if raw.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                _cancel_and_drain(raw, cur)  # --limit reached, Ctrl-C or an error: stop the server
    status = getattr(cur, "sdm_command_status", None)
    if cur.description is None:
        return ColumnarResult(None, status=status, rowcount=getattr(cur, "sdm_command_rows", None), binary=binary)
    if columns is None:  # no rows: the description of the empty result
        columns, getters = _columns(raw, cur, binary)
    if pending:
        flush()
    names = [d.name for d in cur.description]
    return ColumnarResult(names, truncated=truncated, rowcount=rows, status=status, columns_data=columns,
                          binary=binary)


def _columns(raw, cur, binary: bool):
    from psycopg import pq

    cols = []
    for d in cur.description:
        kind = columnar.kind_of(d.type_code, raw_dates=binary)
        loader = None
        if kind in (columnar.TS, columnar.TSTZ, columnar.DATE):
            loader = raw.adapters.get_loader(d.type_code, pq.Format.BINARY)(d.type_code, raw)
        cols.append(columnar.Column(kind, loader=loader, tz=raw.info.timezone))
    return cols, [itemgetter(i) for i in range(len(cols))]


def _cancel_and_drain(raw, cur) -> None:
    """What psycopg's ``Cursor.stream`` does when left early: cancel, then read what is left."""
    try:
        cancel = getattr(raw, "_try_cancel", None) or raw.cancel
        cancel()
        while raw.wait(cur._stream_fetchone_gen(first=False)):
            pass
    except Exception:  # noqa: BLE001 - the cancel error itself, or a closed connection
        pass
    try:
        raw.wait(cur._stream_fetchone_gen(first=False))
    except Exception:  # noqa: BLE001
        pass


class ColumnarResult:
    """Same fields as ``db.QueryResult``; the DataFrame is built while the statement's errors are
    still reported as database errors (a value psycopg cannot load fails the fetch, as on the row path)."""

    def __init__(self, columns: list[str] | None, *, truncated: bool = False, rowcount: int | None = None,
                 status: str | None = None, columns_data: list | None = None, binary: bool = False):
        self.columns, self.truncated, self.rowcount, self.status = columns, truncated, rowcount, status
        self.binary = binary  # whether the rows came in binary format
        self._frame = None if columns is None else columnar.frame(columns, columns_data or [], rowcount or 0)

    def frame(self):
        return self._frame
