"""The engine hooks of sdm_jupyter (connect_hooks.py): pooled connections follow a renewed session,
a failed connect leaves the token in no traceback frame, and the idle check works for any fd."""

from __future__ import annotations

import os
import resource
import socket

import pytest
from sqlalchemy import text

from sdm_jupyter.db import is_stale, make_engine
from sdm_jupyter.gateway_client import GatewayClient, GatewayConfig
from tests.support.accounts import free_port


MARKER = "sdms.TOKEN-MUST-NOT-SHOW"


def _places_holding_the_marker(exc: BaseException) -> list[str]:
    """Every frame variable, exception attribute and psycopg connection reachable from ``exc``
    (as ``%xmode Verbose``, ``%debug`` or an error reporter would reach them) that shows MARKER."""
    seen, chain = [], []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for exc in chain:
        if MARKER in str(exc):
            seen.append(f"str({type(exc).__name__})")
        for name, value in [*vars(exc).items(), ("pgconn", getattr(exc, "pgconn", None)),
                            ("orig", getattr(exc, "orig", None))]:
            if value is not None and MARKER in repr(value) + repr(getattr(value, "password", b"")):
                seen.append(f"{type(exc).__name__}.{name}")
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename != __file__:  # this test's own frames hold the marker
                for name, value in tb.tb_frame.f_locals.items():
                    try:
                        shown = repr(value)
                    except Exception:  # noqa: BLE001
                        continue
                    if MARKER in shown:
                        seen.append(f"{tb.tb_frame.f_code.co_name}:{name}")
            tb = tb.tb_next
    return seen


def test_a_failed_connect_leaves_the_token_in_no_frame():
    """%xmode Verbose prints every frame's variables, and psycopg hangs the failed connection
    (with its password) on the error: the token must be in none of them."""
    engine = make_engine(host="127.0.0.1", port=free_port(), datasource="prod", credential="read-only",
                         token=lambda: MARKER, connect_timeout=2)
    with pytest.raises(Exception) as info:
        engine.connect()
    assert not _places_holding_the_marker(info.value)
    engine.dispose()


def test_an_interrupted_connect_leaves_the_token_in_no_frame():
    """Ctrl-C on a connect that hangs (a listener that never answers)."""
    import signal
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    engine = make_engine(host="127.0.0.1", port=silent.getsockname()[1], datasource="prod",
                         credential="read-only", token=lambda: MARKER, connect_timeout=30)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            engine.connect()
    finally:
        timer.cancel()
        silent.close()
        engine.dispose()
    assert not _places_holding_the_marker(info.value)


class _Conn:
    closed = False

    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def test_the_idle_check_works_above_fd_1023():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"this process may not open descriptor 1500 (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1500)
    try:
        assert is_stale(_Conn(high)) is False  # quiet: still usable (select() said stale for any fd >= 1024)
        b.sendall(b"E")  # the gateway's goodbye
        assert is_stale(_Conn(high)) is True
    finally:
        os.close(high)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.postgres
@pytest.mark.listener
def test_pooled_connections_follow_a_renewed_session(gw):
    """The gateway closes a connection when the session it logged in with expires. Once the client
    has renewed, a pooled connection of the old session is replaced at its next checkout instead
    of being cut off mid-query later."""
    env = {"SDM_GATEWAY_URL": gw.api_url, "SDM_API_KEY": gw.keys["analyst"], "SDM_GATEWAY_POSTGRES": gw.postgres,
           "SDM_HOME": str(gw.state.home.root.parent / "no-home")}
    client = GatewayClient(GatewayConfig.discover(env))
    host, port = client.postgres_address()
    engine = make_engine(host=host, port=port, datasource="prod", credential="read-only", token=client.token)
    try:
        def backend() -> int:
            with engine.connect() as conn:
                return conn.execute(text("SELECT pg_backend_pid()")).scalar()

        first = backend()
        assert backend() == first  # same session: the pooled connection is reused
        old = client.session().id
        client.invalidate()  # as when the session nears its end: the next token() opens a new one
        renewed = backend()
        assert client.session().id != old and renewed != first
        assert backend() == renewed
    finally:
        engine.dispose()
        client.close()


def test_other_errors_keep_their_meaning():
    from sdm_jupyter.connect_hooks import _scrubbed

    try:
        raise SystemExit(3)
    except SystemExit as exc:
        kept = _scrubbed(exc)
    assert isinstance(kept, SystemExit) and kept.code == 3 and kept.__traceback__ is None
