"""A MySQL datasource that misbehaves during the gateway's login (review of the login phases): the
client gets a MySQL error that says what happened, never "internal gateway error", and the
session's record has the reason. The fake servers here are plain sockets speaking just enough
of the handshake."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import tempfile
import threading

import pymysql
import pytest

from sdm_proxy.control import catalog, roles
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire.mysql.flags import Cap, front_capabilities
from sdm_proxy.wire.mysql.handshake import build_handshake
from sdm_proxy.wire.mysql.packets import frame

pytestmark = pytest.mark.mysql

_names = itertools.count()


def _serve(lsock: socket.socket, greeting: bytes) -> None:
    """Greet, read the gateway's HandshakeResponse41, then reset the connection."""
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        conn.sendall(frame(greeting, 0))
        conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def _hostile(gw, lsock: socket.socket, greeting: bytes, *, host: str, port: int, password: bytes) -> str:
    threading.Thread(target=_serve, args=(lsock, greeting), daemon=True).start()
    st, name = gw.state, f"hostile{next(_names)}"
    catalog.add_datasource(st.cp, st.admin, name, type="mysql", host=host, port=port, database="app")
    catalog.add_credential(st.cp, st.admin, name, "read-only", username="app_ro", secret=SecretValue(password))
    roles.create_role(st.cp, st.admin, f"r-{name}")
    roles.lease(st.cp, st.admin, f"r-{name}", name, "read-only")
    roles.assign_role(st.cp, st.admin, f"r-{name}", "ann")
    return name


def _login_error(gw, datasource: str) -> str:
    with pytest.raises(pymysql.MySQLError) as refused:
        pymysql.connect(**gw.kwargs("ann", "read-only", database=datasource), read_timeout=10)
    return str(refused.value.args[-1])


def test_a_reset_during_the_login_is_a_login_error(mysql_gateway):
    """Before: ConnectionResetError escaped as 'internal gateway error' with a traceback."""
    lsock = socket.create_server(("127.0.0.1", 0))
    caps = int(front_capabilities(tls=False) | Cap.PLUGIN_AUTH)
    greeting = build_handshake(connection_id=7, scramble=b"A" * 20, capabilities=caps)
    try:
        name = _hostile(mysql_gateway, lsock, greeting, host="127.0.0.1", port=lsock.getsockname()[1],
                        password=b"pw")
        message = _login_error(mysql_gateway, name)
    finally:
        lsock.close()
    assert "reset the connection during the login" in message and "internal" not in message


def test_a_reply_the_server_cannot_take_is_a_login_error_without_its_text(mysql_gateway):
    """A clear password over 255 bytes to a server without PLUGIN_AUTH_LENENC_CLIENT_DATA (over a
    Unix socket, where mysql_clear_password is allowed): before, a ValueError (internal error)."""
    directory = tempfile.mkdtemp(prefix="sdm-my-hostile-")
    path = os.path.join(directory, "mysqld.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen()
    caps = int((front_capabilities(tls=False) | Cap.PLUGIN_AUTH) & ~Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    greeting = build_handshake(connection_id=8, scramble=b"B" * 20, capabilities=caps,
                               auth_plugin="mysql_clear_password")
    secret = b"s" * 300
    try:
        name = _hostile(mysql_gateway, lsock, greeting, host=path, port=3306, password=secret)
        message = _login_error(mysql_gateway, name)
    finally:
        lsock.close()
        os.unlink(path)
        os.rmdir(directory)
    assert "in a form that server accepts" in message and "internal" not in message
    assert secret.decode() not in message
