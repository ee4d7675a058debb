"""The pure MySQL login layers against a real, password-enforcing MariaDB (the ``mysql_server``
fixture): our greeting parser, our HandshakeResponse41 and scramble, and the UpstreamLogin machine.
The responses that follow a login are in test_mysql_real_server.py."""

from __future__ import annotations

import socket

import pytest
from sdm_proxy.wire.mysql.auth import (
    UpstreamLogin,
)
from sdm_proxy.wire.mysql.errors import ServerProtocolError, UpstreamLoginError
from sdm_proxy.wire.mysql.messages import (
    NATIVE_PASSWORD,
    Cap,
    ErrPacket,
    OkPacket,
    Status,
    parse_handshake,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_SERVER_CONTROL_PACKET,
    PacketReader,
)

from tests.wire.mysql.raw_client import CLIENT_CAPS
from tests.wire.mysql.raw_client import command as _command
from tests.wire.mysql.raw_client import raw_login as _raw_login
from tests.wire.mysql.raw_client import read_packet as _read_packet
from tests.wire.mysql.raw_client import text_rows as _text_rows

pytestmark = pytest.mark.mysql


# ---- login -------------------------------------------------------------------------------------


def test_greeting_parses(mysql_server):
    sock = socket.create_connection((mysql_server.host, mysql_server.port), timeout=15)
    try:
        reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=0)
        hs = parse_handshake(_read_packet(sock, reader).payload)
    finally:
        sock.close()
    assert hs.is_mariadb and hs.protocol_version == 10
    assert len(hs.scramble) == 20 and b"\0" not in hs.scramble
    assert hs.auth_plugin == NATIVE_PASSWORD
    assert hs.capabilities & Cap.PROTOCOL_41 and hs.capabilities & Cap.DEPRECATE_EOF
    assert hs.connection_id > 0


def test_native_password_login_then_current_user(mysql_server):
    sock, caps, greeting, reply = _raw_login(mysql_server, "read-only", caps=CLIENT_CAPS | Cap.DEPRECATE_EOF)
    try:
        assert isinstance(reply, OkPacket), reply
        assert reply.status & Status.AUTOCOMMIT
        scanner, raw = _command(sock, b"\x03SELECT CURRENT_USER(), CONNECTION_ID()", caps)
        assert scanner.error is None and scanner.rows == 1 and scanner.result_sets == 1
        [[user, conn_id]] = _text_rows(raw, caps)
        assert user == mysql_server.logins["read-only"].username.encode() + b"@%"
        assert int(conn_id) == greeting.connection_id  # what KILL mapping relies on
    finally:
        sock.close()


def test_wrong_password_is_err_1045(mysql_server):
    sock, _, _, reply = _raw_login(mysql_server, "read-only", password="not-the-password")
    sock.close()
    assert isinstance(reply, ErrPacket)
    assert (reply.code, reply.sqlstate) == (1045, "28000")
    assert "not-the-password" not in reply.message


def _drive_login(server, key: str, *, password: str | None = None, front_caps: int = CLIENT_CAPS,
                 tls: str = "disable") -> tuple[UpstreamLogin, socket.socket]:
    login = server.login(key)
    secret = (login.password if password is None else password).encode()
    calls = []

    def secret_fn() -> bytes:
        calls.append(1)
        return secret

    machine = UpstreamLogin(username=login.username, database=server.database, front_capabilities=front_caps,
                            attrs={"_client_name": "sdm-gateway"}, tls=tls)
    sock = socket.create_connection((server.host, server.port), timeout=15)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError("server closed")
            step = machine.receive_data(data, secret_fn)
            assert not step.start_tls
            if step.send:
                sock.sendall(step.send)
            if step.done:
                break
    except BaseException:
        sock.close()
        raise
    assert calls, "the secret was never asked for"
    return machine, sock


def test_upstream_login_machine_real_server(mysql_server):
    machine, sock = _drive_login(mysql_server, "restricted", front_caps=CLIENT_CAPS | Cap.DEPRECATE_EOF)
    try:
        assert machine.ok is not None and machine.thread_id == machine.handshake.connection_id
        assert machine.capabilities & Cap.DEPRECATE_EOF
        assert "pw_" not in repr(machine) and "pw_" not in repr(machine.auth)
        _, raw = _command(sock, b"\x03SELECT CURRENT_USER()", machine.capabilities)
        assert _text_rows(raw, machine.capabilities) == [[b"sdm_restricted@%"]]
    finally:
        sock.close()


def test_upstream_login_machine_wrong_password(mysql_server):
    with pytest.raises(UpstreamLoginError) as info:
        _drive_login(mysql_server, "superuser", password="wrong-" + "x" * 10)
    assert info.value.code == 1045 and info.value.sqlstate == "28000"
    assert "wrong-" not in str(info.value) and mysql_server.logins["superuser"].password not in repr(info.value)


def test_upstream_tls_required_but_not_offered(mysql_server):
    sock = socket.create_connection((mysql_server.host, mysql_server.port), timeout=15)
    try:
        greeting_bytes = sock.recv(65536)
    finally:
        sock.close()
    machine = UpstreamLogin(username="x", database=None, front_capabilities=CLIENT_CAPS, tls="require")
    reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError)
    reader.feed(greeting_bytes)
    if parse_handshake(reader.next_packet().payload).capabilities & Cap.SSL:
        pytest.skip("this MariaDB offers TLS")
    with pytest.raises(UpstreamLoginError, match="requires TLS"):
        machine.receive_data(greeting_bytes, lambda: b"unused")


def test_connect_upstream_over_the_unix_socket(mysql_server):
    """A datasource whose host is a path: the gateway logs in over the server's Unix socket."""
    import asyncio

    from sdm_proxy.unlock.client import DatasourceInfo, UnlockedCredential
    from sdm_proxy.vault.secret import SecretValue
    from sdm_proxy.wire.mysql.upstream import connect_upstream

    login = mysql_server.logins["read-only"]
    cred = UnlockedCredential(
        user="ann", session_id="s", credential="read-only", db_user=login.username, version=1, via="role:r",
        datasource=DatasourceInfo("my", "mysql", str(mysql_server.socket_path), 0, mysql_server.database,
                                  "disable", None),
        access_expires_at=None, secret=SecretValue(login.password.encode()))

    async def main():
        up = await connect_upstream(cred, capabilities=CLIENT_CAPS)
        try:
            assert up.thread_id > 0  # the server's OK came back
            assert up.writer.transport.get_extra_info("socket").family == socket.AF_UNIX
        finally:
            up.writer.close()

    asyncio.run(main())
