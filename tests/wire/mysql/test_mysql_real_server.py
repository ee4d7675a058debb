"""The pure MySQL layers against a real, password-enforcing MariaDB (the ``mysql_server`` fixture).

Raw sockets only: the greeting is read with our parser, the login is our HandshakeResponse41 with
our scramble, and every response is followed by our ``ResponseScanner``. Rows are decoded here in
the test (never by the scanner) to check what the server really said.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from sdm_proxy.wire.mysql.auth import (
    UpstreamLogin,
    native_password_scramble,
    upstream_capabilities,
)
from sdm_proxy.wire.mysql.commands import ResponseKind, ResponseScanner, classify
from sdm_proxy.wire.mysql.errors import ServerProtocolError, UpstreamLoginError
from sdm_proxy.wire.mysql.messages import (
    NATIVE_PASSWORD,
    Cap,
    ErrPacket,
    OkPacket,
    Status,
    build_handshake_response,
    parse_auth_reply,
    parse_handshake,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_FRAME,
    MAX_SERVER_CONTROL_PACKET,
    PacketReader,
    PayloadReader,
    frame,
)

pytestmark = pytest.mark.mysql

CLIENT_CAPS = int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
                  | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS | Cap.TRANSACTIONS | Cap.LONG_PASSWORD
                  | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS)


def _read_packet(sock: socket.socket, reader: PacketReader):
    while (packet := reader.next_packet()) is None:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        reader.feed(data)
    return packet


def _raw_login(server, key: str, *, password: str | None = None, caps: int = CLIENT_CAPS):
    """Our own login: returns (socket, negotiated caps, greeting, server reply)."""
    login = server.login(key)
    pw = (login.password if password is None else password).encode()
    sock = socket.create_connection((server.host, server.port), timeout=15)
    reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=0)
    greeting = parse_handshake(_read_packet(sock, reader).payload)
    negotiated = upstream_capabilities(caps, greeting.capabilities, tls=False)
    response = build_handshake_response(
        capabilities=negotiated, username=login.username,
        auth_response=native_password_scramble(pw, greeting.scramble), database=server.database,
        auth_plugin=NATIVE_PASSWORD, attrs={"_client_name": "sdm-gateway-test", "program_name": "pytest"})
    sock.sendall(frame(response, 1))
    reader.expect_seq = 2
    reply = parse_auth_reply(_read_packet(sock, reader).payload)
    return sock, negotiated, greeting, reply


def _command(sock, payload: bytes, caps: int, kind: ResponseKind | None = None, *, seed: int = 0,
             client_file: bytes | None = None):
    """Send one command, follow the response with the scanner fed in random slices; return (scanner, bytes)."""
    if kind is None:
        kind = classify(payload, capabilities=caps, multi_statements_allowed=True).response
    sock.sendall(frame(payload, 0))
    scanner = ResponseScanner(kind, capabilities=caps, seq=1)
    rng = random.Random(seed)
    raw = bytearray()
    while not scanner.done:
        if scanner.wants_client_data:
            assert client_file is not None
            seq = scanner.next_seq
            data = frame(client_file, seq) + frame(b"", (seq + 1) & 0xFF)
            assert scanner.feed_client(data) == len(data)
            sock.sendall(data)
            continue
        data = sock.recv(1 << 20)
        assert data, "server closed the connection"
        pos = 0
        while pos < len(data) and not scanner.done and not scanner.wants_client_data:
            piece = data[pos:pos + rng.choice((1, 2, 3, 5, 7, 64, 4096, 1 << 20))]
            used = scanner.feed(piece)
            raw += piece[:used]
            pos += used
            if used < len(piece):
                break
        assert pos == len(data), "server sent bytes after the end of the response"
    return scanner, bytes(raw)


def _text_rows(raw: bytes, caps: int) -> list[list[bytes | None]]:
    """Decode a text result set in the test (the scanner never does)."""
    reader = PacketReader(limit=1 << 30, error=ServerProtocolError, expect_seq=None)
    reader.feed(raw)
    packets = []
    while (p := reader.next_packet()) is not None:
        packets.append(p.payload)
    ncols = PayloadReader(packets[0], error=ServerProtocolError).lenenc_int()
    body = packets[1 + ncols + (0 if caps & Cap.DEPRECATE_EOF else 1):]
    rows = []
    for payload in body:
        if payload[0] == 0xFE and len(payload) < MAX_FRAME:
            break
        r = PayloadReader(payload, error=ServerProtocolError)
        row = []
        for _ in range(ncols):
            if r.peek() == 0xFB:
                r.skip(1)
                row.append(None)
            else:
                row.append(r.lenenc_bytes())
        rows.append(row)
    return rows


@pytest.fixture(params=[True, False], ids=["deprecate_eof", "classic_eof"])
def ro_conn(request, mysql_server):
    caps = CLIENT_CAPS | (Cap.DEPRECATE_EOF if request.param else 0)
    sock, negotiated, _, reply = _raw_login(mysql_server, "read-only", caps=caps)
    assert isinstance(reply, OkPacket)
    yield sock, negotiated
    sock.sendall(frame(b"\x01", 0))
    sock.close()


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


# ---- responses followed by the scanner -------------------------------------------------------------


def test_select_many_rows(ro_conn):
    sock, caps = ro_conn
    for seed in range(3):
        scanner, raw = _command(sock, b"\x03SELECT id, amount, created_at FROM orders ORDER BY id", caps, seed=seed)
        assert scanner.rows == 600 and scanner.error is None and scanner.result_sets == 1
        rows = _text_rows(raw, caps)
        assert len(rows) == 600 and rows[0][0] == b"1" and rows[-1][0] == b"600"
        assert not scanner.status & Status.MORE_RESULTS_EXISTS


def test_empty_result_and_null(ro_conn):
    sock, caps = ro_conn
    scanner, _ = _command(sock, b"\x03SELECT id FROM orders WHERE id < 0", caps)
    assert scanner.rows == 0 and scanner.result_sets == 1 and scanner.error is None
    scanner, raw = _command(sock, b"\x03SELECT NULL, 'a'", caps)
    assert _text_rows(raw, caps) == [[None, b"a"]]


def test_read_only_insert_is_database_error_and_connection_stays(ro_conn):
    sock, caps = ro_conn
    scanner, _ = _command(sock, b"\x03INSERT INTO customers (name, email, country) VALUES ('a','b','DE')", caps)
    assert scanner.error is not None and scanner.error.code == 1142 and scanner.error.sqlstate == "42000"
    scanner, _ = _command(sock, b"\x03SELECT 1", caps)
    assert scanner.rows == 1


def test_ok_packets_and_status(ro_conn):
    sock, caps = ro_conn
    scanner, _ = _command(sock, b"\x03SET @sdm_test = 42", caps)
    assert scanner.error is None and scanner.rows == 0 and scanner.affected_rows == 0 and scanner.result_sets == 1
    scanner, _ = _command(sock, b"\x03START TRANSACTION", caps)
    assert scanner.status & Status.IN_TRANS
    scanner, _ = _command(sock, b"\x03ROLLBACK", caps)
    assert not scanner.status & Status.IN_TRANS


def test_simple_commands(ro_conn):
    sock, caps = ro_conn
    for payload in (b"\x0e", b"\x02sdm_test"):
        scanner, _ = _command(sock, payload, caps)
        assert scanner.done and scanner.error is None
    scanner, _ = _command(sock, b"\x02no_such_db", caps)
    assert scanner.error.code in (1044, 1049)
    scanner, _ = _command(sock, b"\x09", caps)
    assert b"Uptime" in scanner.info
    scanner, _ = _command(sock, b"\x04orders\0", caps)
    assert scanner.done and scanner.error is None
    scanner, _ = _command(sock, b"\x1b\x01\x00", caps)  # COM_SET_OPTION multi-statements off
    assert scanner.done and scanner.error is None


def test_syntax_error(ro_conn):
    sock, caps = ro_conn
    scanner, _ = _command(sock, b"\x03SELEC 1", caps)
    assert scanner.error.code == 1064 and scanner.error.sqlstate == "42000"


def _execute_payload(stmt_id: int, value: int, *, flags: int = 0) -> bytes:
    # COM_STMT_EXECUTE with one LONGLONG parameter, types sent.
    return (b"\x17" + struct.pack("<IBI", stmt_id, flags, 1) + b"\x00" + b"\x01" + b"\x08\x00"
            + struct.pack("<q", value))


def test_prepared_statements(ro_conn):
    sock, caps = ro_conn
    scanner, _ = _command(sock, b"\x16SELECT id, amount FROM orders WHERE id <= ?", caps)
    prep = scanner.prepared
    assert prep is not None and prep.params == 1 and prep.columns == 2 and scanner.error is None
    scanner, _ = _command(sock, _execute_payload(prep.statement_id, 25), caps)
    assert scanner.rows == 25 and scanner.error is None and scanner.binary
    # With a read-only cursor: metadata now, rows by COM_STMT_FETCH.
    scanner, _ = _command(sock, _execute_payload(prep.statement_id, 10, flags=1), caps)
    assert scanner.rows == 0 and scanner.status & Status.CURSOR_EXISTS and scanner.error is None
    fetched = 0
    while True:
        scanner, _ = _command(sock, b"\x1c" + struct.pack("<II", prep.statement_id, 4), caps)
        assert scanner.error is None
        fetched += scanner.rows
        if scanner.status & Status.LAST_ROW_SENT:
            break
    assert fetched == 10
    scanner, _ = _command(sock, b"\x1a" + struct.pack("<I", prep.statement_id), caps)  # STMT_RESET
    assert scanner.error is None
    sock.sendall(frame(b"\x19" + struct.pack("<I", prep.statement_id), 0))  # STMT_CLOSE: no answer
    scanner, _ = _command(sock, _execute_payload(prep.statement_id, 1), caps)
    assert scanner.error.code == 1243
    scanner, _ = _command(sock, b"\x16SELEKT ?", caps)
    assert scanner.prepared is None and scanner.error.code == 1064
    scanner, _ = _command(sock, b"\x16DO 1", caps)
    assert scanner.prepared.params == 0 and scanner.prepared.columns == 0


def test_multi_statements_and_results(mysql_server):
    caps = CLIENT_CAPS | Cap.DEPRECATE_EOF | Cap.MULTI_STATEMENTS
    sock, negotiated, _, reply = _raw_login(mysql_server, "read-only", caps=caps)
    try:
        assert isinstance(reply, OkPacket)
        scanner, _ = _command(sock, b"\x03SELECT 1; SELECT id FROM orders LIMIT 3; DO 1; SELECT 2", negotiated)
        assert scanner.result_sets == 4 and scanner.rows == 5 and scanner.error is None
        scanner, _ = _command(sock, b"\x03SELECT 1; SELEC 2; SELECT 3", negotiated)
        assert scanner.result_sets == 1 and scanner.error.code == 1064
        scanner, _ = _command(sock, b"\x03SELECT 9", negotiated)
        assert scanner.rows == 1
    finally:
        sock.close()


def test_local_infile(mysql_server):
    caps = CLIENT_CAPS | Cap.DEPRECATE_EOF | Cap.LOCAL_FILES
    sock, negotiated, _, reply = _raw_login(mysql_server, "superuser", caps=caps)
    try:
        assert isinstance(reply, OkPacket)
        scanner, _ = _command(sock, b"\x03CREATE TEMPORARY TABLE sdm_infile (a INT)", negotiated)
        assert scanner.error is None
        scanner, _ = _command(sock, b"\x03LOAD DATA LOCAL INFILE 'nums.txt' INTO TABLE sdm_infile", negotiated,
                              client_file=b"1\n2\n3\n")
        if scanner.error is not None and scanner.error.code in (1148, 3948):
            pytest.skip("local_infile is disabled on this server")
        assert scanner.local_infile == b"nums.txt"
        assert scanner.error is None and scanner.affected_rows == 3
        scanner, raw = _command(sock, b"\x03SELECT SUM(a) FROM sdm_infile", negotiated)
        assert _text_rows(raw, negotiated) == [[b"6"]]
    finally:
        sock.close()


def test_local_infile_not_negotiated_is_server_error(mysql_server):
    sock, caps, _, _reply = _raw_login(mysql_server, "superuser", caps=CLIENT_CAPS | Cap.DEPRECATE_EOF)
    try:
        scanner, _ = _command(sock, b"\x03LOAD DATA LOCAL INFILE 'x' INTO TABLE nope", caps)
        # Without CLIENT_LOCAL_FILES the server refuses itself; it must never ask for the file.
        assert scanner.error is not None and scanner.local_infile is None
    finally:
        sock.close()


def test_split_row_larger_than_16_mib(mysql_server):
    """A row of 16 MiB + 100 bytes travels as two frames; the scanner counts it once."""
    admin, admin_caps, _, _reply = _raw_login(mysql_server, "superuser", caps=CLIENT_CAPS | Cap.DEPRECATE_EOF)
    try:
        _, raw = _command(admin, b"\x03SELECT @@global.max_allowed_packet", admin_caps)
        [[original]] = _text_rows(raw, admin_caps)
        scanner, _ = _command(admin, b"\x03SET GLOBAL max_allowed_packet = 67108864", admin_caps)
        assert scanner.error is None
        _check_split_rows(mysql_server)
    finally:
        _command(admin, b"\x03SET GLOBAL max_allowed_packet = " + original, admin_caps)
        admin.close()


def _check_split_rows(mysql_server):
    for deprecate in (Cap.DEPRECATE_EOF, 0):
        sock, caps, _, _reply = _raw_login(mysql_server, "read-only", caps=CLIENT_CAPS | deprecate)
        try:
            size = MAX_FRAME + 100
            scanner, raw = _command(sock, b"\x03SELECT REPEAT('x', %d), 7 UNION ALL SELECT 'y', 8" % size, caps,
                                    seed=4)
            assert scanner.error is None and scanner.rows == 2
            rows = _text_rows(raw, caps)
            assert len(rows[0][0]) == size and rows[1] == [b"y", b"8"]
            scanner, _ = _command(sock, b"\x03SELECT REPEAT('z', %d)" % (MAX_FRAME - 4), caps)  # exact multiple
            assert scanner.rows == 1 and scanner.error is None
        finally:
            sock.close()
