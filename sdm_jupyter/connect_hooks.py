"""How an engine's connections log in with the session token, and when a pooled one is retired.

- ``do_connect``: the token is fetched for each new connection (a renewed session is picked up
  without rebuilding the engine, and the token never sits in the URL). It is never written into
  SQLAlchemy's connect parameters, and a failed connect is re-raised without the frames that held
  it, so even a verbose traceback (``%xmode Verbose`` prints every frame's variables) cannot show it.
- ``checkout``: a pooled connection is retired when the gateway closed it while idle (session
  revoked, grant expired, restart), and when it logged in with a session the client has since
  renewed: the gateway closes it when that session expires, perhaps mid-query.
"""

from __future__ import annotations

import hashlib
import select
from typing import Any, Callable

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

_SESSION_KEY = "sdm_session"  # conn_rec.info: a digest of the token the connection logged in with


def install(engine: Engine, token: Callable[[], str], on_auth_failure: Callable[[], None] | None) -> None:
    @event.listens_for(engine, "do_connect")
    def _session_token(dialect, conn_rec, cargs, cparams):  # noqa: ANN001
        return _connect(dialect, cargs, cparams, token, conn_rec, retry=on_auth_failure)

    @event.listens_for(engine, "checkout")
    def _still_current(dbapi_conn, conn_rec, conn_proxy):  # noqa: ANN001
        # A pre-ping without a round trip (and without an audited ";" per query).
        if is_stale(dbapi_conn):
            raise DisconnectionError("the gateway closed this idle connection")
        try:
            current = _digest(token())  # renews a session near its end
        except Exception:  # noqa: BLE001 - the control API is down: the pooled connection still works
            return
        if conn_rec.info.get(_SESSION_KEY) != current:
            raise DisconnectionError("this connection's session was renewed: reconnecting with the new one")


def _connect(dialect, cargs, cparams, token, conn_rec, *, retry: Callable[[], None] | None):  # noqa: ANN001
    failure: BaseException | None = None
    try:
        for attempt in range(2 if retry is not None else 1):
            if attempt:
                retry()  # the session was revoked or ended early: open a new one and try once more
            current = token()
            try:
                conn = dialect.connect(*cargs, **cparams, password=current)
            except Exception as exc:  # noqa: BLE001
                if retry is None or attempt or "password authentication failed" not in str(exc):
                    raise
                continue
            conn_rec.info[_SESSION_KEY] = _digest(current)
            return conn
    except BaseException as exc:  # noqa: BLE001 - an interrupt during a hanging connect too
        failure = _scrubbed(exc)
    # Raised from here, with none of the frames below (psycopg's connect keeps the parameters, the
    # token included, in its variables) and with no local of this frame holding the token.
    current = None
    raise failure


def _scrubbed(exc: BaseException) -> BaseException:
    """The same error without what holds the token: every exception drags its frames along, and
    psycopg attaches the failed connection (whose ``.password`` it is) to its errors."""
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt()
    if hasattr(exc, "_pgconn"):  # a psycopg error: the same type and message, nothing attached
        try:
            return type(exc)(*(a for a in exc.args if isinstance(a, str)))
        except Exception:  # noqa: BLE001 - an error type that cannot be rebuilt from its message
            return RuntimeError(str(exc))
    exc.__context__ = exc.__cause__ = None  # anything else: itself (a SystemExit keeps its code),
    return exc.with_traceback(None)  # without the frames


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def is_stale(dbapi_conn: Any) -> bool:
    """True when the connection is closed, or has bytes waiting while idle (the gateway's goodbye).
    poll(), not select(): select() cannot watch a descriptor numbered 1024 or more."""
    if dbapi_conn.closed or getattr(dbapi_conn, "broken", False):
        return True
    try:
        poller = select.poll()
        poller.register(dbapi_conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
