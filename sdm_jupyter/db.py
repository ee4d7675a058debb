"""Connections through the gateway's PostgreSQL listener, and running one statement into a DataFrame.

The listener takes ``dbname`` = datasource, ``user`` = credential and ``password`` = the session
token (DESIGN §4 Wire). Engines fetch the token when they open a connection (connect_hooks.py), so
a renewed session is picked up without rebuilding the engine and the token never sits in the URL.
"""

from __future__ import annotations


import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import URL, create_engine, text
from sqlalchemy.engine import Engine

from . import connect_hooks
from .attribution import append_comment, attach_to_engine
from .net import is_loopback
from .errors import DatabaseError, GatewayUnreachable, InvalidRequest, NotFound, PermissionDenied, QueryCancelled

# SQLAlchemy text()'s own rule for :name (sqlalchemy.sql.elements.TextClause): `:since::date`
# is no bind (review: the older lookahead asked for a variable `sinc`).
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])", re.UNICODE)


# ---- which credential -----------------------------------------------------------------------------


def resolve_credential(usable: Iterable[Mapping[str, Any]], datasource: str, credential: str | None) -> dict:
    """The row of GET /v1/datasources to use, or a one-line error naming the choices."""
    usable = list(usable)
    rows = [r for r in usable if r.get("datasource") == datasource]
    if not rows:
        names = sorted({str(r.get("datasource")) for r in usable})
        yours = f"yours: {', '.join(names)}" if names else "you may use none yet: ask an admin for a role lease"
        raise NotFound(f"no datasource {datasource!r} that you may use ({yours}; see `%sdm ls`)")
    creds = [str(r.get("credential")) for r in rows]
    if credential:
        for r in rows:
            if r.get("credential") == credential:
                return dict(r)
        raise PermissionDenied(
            f"you hold no lease or grant for credential {credential!r} on {datasource} (yours: "
            f"{', '.join(creds)}); an admin can grant it: `sdm grant YOU {datasource} {credential} --for 1h`")
    if len(rows) == 1:
        return dict(rows[0])
    raise InvalidRequest(f"{datasource}: you may use several credentials ({', '.join(creds)}); "
                         "pick one with --as CREDENTIAL")


# ---- engines ----------------------------------------------------------------------------------------


_warned: set[str] = set()


def _warn_unverified(host: str) -> None:
    """Once per gateway host: TLS without a CA is encrypted but not authenticated."""
    if host not in _warned:
        _warned.add(host)
        warnings.warn(f"the gateway at {host} is reached over TLS without verifying its certificate; set "
                      "SDM_GATEWAY_CA to its CA file (the gateway's $SDM_HOME/tls/ca.pem) so that the "
                      "session token goes only to the real gateway", stacklevel=3)


def _remote_sslmode(asked: str, host: str, ca_file: str | None) -> str:
    """The session token is a bearer credential: off this machine it goes only to a gateway that
    proved who it is (with its CA), and never in clear (``disable``/``allow`` would send it so)."""
    if asked in ("disable", "allow"):
        raise InvalidRequest(f"sslmode={asked} would send the session token to {host} in clear; the "
                             "gateway requires TLS off loopback")
    if ca_file:
        return "verify-full"
    mode = "require" if asked == "prefer" else asked  # verify-*: libpq's default root file, ~/.postgresql
    if mode == "require":
        _warn_unverified(host)
    return mode


def make_engine(*, host: str, port: int, datasource: str, credential: str | None,
                token: Callable[[], str], tags: Callable[[], Mapping[str, object]] | None = None,
                on_auth_failure: Callable[[], None] | None = None, sslmode: str = "prefer",
                ca_file: str | None = None, connect_timeout: int = 10, **engine_kwargs: Any) -> Engine:
    """A SQLAlchemy engine to ``datasource`` through the gateway, tagging every statement.

    ``ca_file`` is the gateway's CA certificate: off this machine the connection then verifies the
    gateway's certificate and name (``verify-full``) before the session token is sent."""
    url = URL.create("postgresql+psycopg", username=credential or None, host=host, port=port, database=datasource)
    connect_args = {"connect_timeout": connect_timeout, "application_name": "sdm-jupyter"}
    if not is_loopback(host):
        sslmode = _remote_sslmode(sslmode, host, ca_file)
        if ca_file:
            connect_args["sslrootcert"] = ca_file
    connect_args["sslmode"] = sslmode
    connect_args.update(engine_kwargs.pop("connect_args", {}))
    engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    connect_hooks.install(engine, token, on_auth_failure)
    if tags is not None:
        attach_to_engine(engine, tags)
    return engine


is_stale = connect_hooks.is_stale  # kept importable from here


# ---- errors -------------------------------------------------------------------------------------------


def database_error(exc: BaseException, *, datasource: str, address: tuple[str, int]) -> Exception:
    """A psycopg/SQLAlchemy error as one line (never a secret: libpq messages carry none)."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    sqlstate = getattr(orig, "sqlstate", None)
    raw = " ".join(str(orig).split())
    if primary is None:
        if "Connection refused" in raw or "could not connect" in raw or "No route to host" in raw:
            return GatewayUnreachable(
                f"cannot reach the gateway's PostgreSQL listener at {address[0]}:{address[1]}: start it with "
                "`sdm gateway --postgres HOST:PORT` (or set SDM_GATEWAY_POSTGRES to where it listens)")
        # Connection-time errors: keep what the server said after "FATAL:".
        primary = raw.split("FATAL:", 1)[-1].strip() if "FATAL:" in raw else raw
        primary = re.sub(r"^connection failed: ", "", primary)
    hint = getattr(diag, "message_hint", None) if diag is not None else None
    message = f"{datasource}: {primary}"
    if hint:
        message += f" (hint: {hint})"
    if sqlstate:
        message += f" [{sqlstate}]"
    if sqlstate in ("28P01", "28000"):
        return PermissionDenied(message)
    return DatabaseError(message)


# ---- running a statement ------------------------------------------------------------------------------


@dataclass
class QueryResult:
    columns: list[str] | None  # None: the statement returned no rows (DDL/DML)
    rows: list[tuple] = field(default_factory=list)
    truncated: bool = False  # --limit reached; the rest was cancelled on the server
    rowcount: int | None = None
    status: str | None = None
    fetched_whole: bool = False  # several statements: libpq took the whole result before the limit cut it

    def frame(self):
        import pandas as pd

        if self.columns is None:
            return None
        return pd.DataFrame.from_records(self.rows, columns=self.columns, coerce_float=True)


def bind_names(sql: str) -> list[str]:
    """The ``:name`` placeholders in ``sql`` (SQLAlchemy ``text()`` rules, ``::`` casts excluded)."""
    return list(dict.fromkeys(_BIND.findall(sql)))


def compile_statement(engine: Engine, sql: str, values: Mapping[str, Any]) -> tuple[str, dict | None]:
    """``text(sql)`` compiled for psycopg: ``:name`` becomes a real bind parameter, never text."""
    compiled = text(sql).compile(dialect=engine.dialect)
    if compiled.binds:
        return compiled.string, compiled.construct_params(dict(values))
    # No parameters: psycopg must not interpolate, so undo SQLAlchemy's %-doubling. This also lets
    # several statements run in one go (simple query protocol).
    return compiled.string.replace("%%", "%"), None


def run_statement(engine: Engine, sql: str, values: Mapping[str, Any], *, tags: Mapping[str, object],
                  datasource: str, address: tuple[str, int], limit: int | None = None,
                  fetch_size: int = 10_000, progress: Callable[[int], None] | None = None,
                  columnar: bool = True) -> QueryResult:
    """Run one statement in autocommit mode; a KeyboardInterrupt cancels it on the server.
    ``columnar``: rows are fetched column-wise (``fast_fetch``, the same ``frame()``) when possible."""
    statement, params = compile_statement(engine, sql, values)
    statement = append_comment(statement, tags, escape_percent=params is not None)
    try:
        # AUTOCOMMIT for this checkout only: SQLAlchemy restores the level when it goes back to the
        # pool, so engines from %sdm connect keep normal transactions.
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:  # noqa: BLE001 - any connect failure becomes one line
        raise database_error(exc, datasource=datasource, address=address) from None
    try:
        raw = conn.connection.driver_connection
        from . import fast_fetch

        if columnar and fast_fetch.available() and (result := fast_fetch.fetch(
                raw, _stream_cursor_class(), statement, params, limit=limit, fetch_size=fetch_size,
                progress=progress)) is not None:
            return result
        try:
            return _stream(raw, statement, params, limit, fetch_size, progress)
        except Exception as exc:  # noqa: BLE001
            # Several statements in one go need the simple query protocol; nothing ran yet.
            if params is not None or not _is_multi_statement_error(exc):
                raise
        with raw.cursor() as cur:
            cur.execute(statement, params)
            while cur.nextset():  # several statements: report the last one
                pass
            if cur.description is None:
                return QueryResult(None, rowcount=cur.rowcount, status=cur.statusmessage)
            columns = [d.name for d in cur.description]
            rows = cur.fetchmany(limit) if limit else cur.fetchall()
            return QueryResult(columns, rows, truncated=bool(limit) and (cur.rowcount or 0) > limit,
                               rowcount=cur.rowcount, status=cur.statusmessage, fetched_whole=True)
    except KeyboardInterrupt:
        # psycopg already sent a CancelRequest (through the gateway) and drained the reply.
        conn.invalidate()
        raise QueryCancelled(f"{datasource}: query cancelled (interrupted); the database stopped it") from None
    except Exception as exc:  # noqa: BLE001
        if _is_connection_broken(exc) or not _reusable(conn):
            # Not back into the pool: its reset would fail there, with a traceback on stderr
            # (review: after COPY ... TO STDOUT the connection is still busy).
            conn.invalidate()
        raise database_error(exc, datasource=datasource, address=address) from None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def _stream_cursor_class():
    """psycopg's Cursor, taught two things its ``stream()`` drops: the columns of an empty result
    and the command status of a statement without rows. Plain Cursor if psycopg's internals moved."""
    import psycopg

    global _STREAM_CURSOR
    if _STREAM_CURSOR is not None:
        return _STREAM_CURSOR
    try:
        from psycopg import pq
        from psycopg.generators import fetch

        base = psycopg.Cursor._stream_fetchone_gen  # noqa: F841 - the hook we rely on exists
    except (ImportError, AttributeError):
        _STREAM_CURSOR = psycopg.Cursor
        return _STREAM_CURSOR

    E = pq.ExecStatus

    class StreamCursor(psycopg.Cursor):
        sdm_command_status: str | None = None
        sdm_command_rows: int | None = None

        def _stream_fetchone_gen(self, first: bool):
            res = yield from fetch(self._pgconn)
            if res is None:
                return None
            status = res.status
            if status in (E.SINGLE_TUPLE, E.TUPLES_CHUNK):
                self.pgresult = res
                self._tx.set_pgresult(res, set_loaders=first)
                if first:
                    self._make_row = self._make_row_maker()
                return res
            if status in (E.TUPLES_OK, E.COMMAND_OK):
                if first and status == E.TUPLES_OK:
                    self.pgresult = res  # an empty result still describes its columns
                    self._tx.set_pgresult(res, set_loaders=True)
                self.sdm_command_status = (res.command_status or b"").decode("utf-8", "replace") or None
                self.sdm_command_rows = res.command_tuples
                while res:
                    res = yield from fetch(self._pgconn)
                return None
            return self._raise_for_result(res)

    _STREAM_CURSOR = StreamCursor
    return _STREAM_CURSOR


_STREAM_CURSOR = None


def _is_multi_statement_error(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "42601" and "multiple commands" in str(exc)


def _stream(raw, statement, params, limit, fetch_size, progress) -> QueryResult:
    from psycopg import capabilities

    size = max(1, fetch_size) if capabilities.has_stream_chunked() else 1
    rows: list[tuple] = []
    truncated = False
    cur = _stream_cursor_class()(raw)
    with cur:
        it = cur.stream(statement, params, size=size)
        try:
            for row in it:
                if limit and len(rows) >= limit:
                    truncated = True
                    break
                rows.append(row)
                if progress is not None and len(rows) % size == 0:
                    progress(len(rows))
        finally:
            it.close()  # leaving early cancels the rest on the server (psycopg)
        status = getattr(cur, "sdm_command_status", None)
        if cur.description is None and not rows:
            return QueryResult(None, status=status, rowcount=getattr(cur, "sdm_command_rows", None))
        columns = [d.name for d in cur.description] if cur.description is not None else []
        return QueryResult(columns, rows, truncated=truncated, rowcount=len(rows), status=status)


def _reusable(conn) -> bool:
    """The driver connection is open and idle (no statement or COPY still running on it)."""
    from psycopg.pq import TransactionStatus

    raw = getattr(getattr(conn, "connection", None), "driver_connection", None)
    try:
        return raw is not None and not raw.closed and not raw.broken and \
            raw.info.transaction_status == TransactionStatus.IDLE
    except Exception:  # noqa: BLE001 - an odd state is a reason not to reuse it
        return False


def _is_connection_broken(exc: BaseException) -> bool:
    return bool(getattr(exc, "connection_invalidated", False)) or "closed" in str(exc).lower()[:200]


class Progress:
    """A throttled, in-place progress line (IPython display) for long fetches."""

    def __init__(self, label: str, *, after: float = 1.0, every: float = 0.5, enabled: bool = True):
        self.label, self.after, self.every, self.enabled = label, after, every, enabled
        self.start = time.monotonic()
        self._last = 0.0
        self._handle = None

    def __call__(self, rows: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.after or now - self._last < self.every:
            return
        self._last = now
        text_line = f"{self.label}: {rows:,} rows fetched…"
        try:
            from IPython.display import display

            if self._handle is None:
                self._handle = display({"text/plain": text_line}, raw=True, display_id=True)
            else:
                self._handle.update({"text/plain": text_line}, raw=True)
        except Exception:  # noqa: BLE001 - progress must never break a query
            self.enabled = False

    def done(self) -> None:
        if self._handle is not None:
            try:
                self._handle.update({"text/plain": ""}, raw=True)
            except Exception:  # noqa: BLE001
                pass
