"""The pure MySQL layers against a real, password-enforcing MariaDB (the ``mysql_server`` fixture).

Raw sockets only: the greeting is read with our parser, the login is our HandshakeResponse41 with
our scramble, and every response is followed by our ``ResponseScanner``. Rows are decoded here in
the test (never by the scanner) to check what the server really said.
"""

from __future__ import annotations

import struct

import pytest
from sdm_proxy.wire.mysql.messages import (
    Cap,
    OkPacket,
    Status,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_FRAME,
    frame,
)

from tests.wire.mysql.raw_client import CLIENT_CAPS
from tests.wire.mysql.raw_client import command as _command
from tests.wire.mysql.raw_client import raw_login as _raw_login
from tests.wire.mysql.raw_client import text_rows as _text_rows

pytestmark = pytest.mark.mysql

@pytest.fixture(params=[True, False], ids=["deprecate_eof", "classic_eof"])
def ro_conn(request, mysql_server):
    caps = CLIENT_CAPS | (Cap.DEPRECATE_EOF if request.param else 0)
    sock, negotiated, _, reply = _raw_login(mysql_server, "read-only", caps=caps)
    assert isinstance(reply, OkPacket)
    yield sock, negotiated
    sock.sendall(frame(b"\x01", 0))
    sock.close()


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
