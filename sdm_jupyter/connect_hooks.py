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
        conn = _connect(dialect, cargs, cparams, token, conn_rec, retry=on_auth_failure)
        return conn

    @event.listens_for(engine, "checkout")
    def _still_current(dbapi_conn, conn_rec, conn_proxy):  # noqa: ANN001
        # A pre-ping without a round trip (and without an audited ";" per query).
        if is_stale(dbapi_conn):
            raise DisconnectionError("the gateway closed this idle connection")
        if conn_rec.info.get(_SESSION_KEY) != _digest(token()):  # token() renews a session near its end
            raise DisconnectionError("this connection's session was renewed: reconnecting with the new one")


def _connect(dialect, cargs, cparams, token, conn_rec, *, retry: Callable[[], None] | None):  # noqa: ANN001
    error = None
    for attempt in range(2 if retry is not None else 1):
        if attempt:
            retry()  # the session was revoked or ended early: open a new one and try once more
        current = token()
        try:
            conn = dialect.connect(*cargs, **cparams, password=current)
        except Exception as exc:  # noqa: BLE001
            error = exc
            if retry is None or "password authentication failed" not in str(exc):
                break
            continue
        conn_rec.info[_SESSION_KEY] = _digest(current)
        return conn
    # Re-raised from here, without the traceback of the frames below (psycopg's own connect keeps
    # the parameters, token included, in its variables) and without this frame's token.
    del current
    error.__traceback__ = None
    error.__context__ = error.__cause__ = None
    raise error


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
