"""Bad input gets an ERR with a proper code and SQLSTATE, an audit event, and no effect on others:
wrong or expired tokens, no lease, unknown or wrong-type datasources, an unreachable upstream,
malformed / truncated / oversized packets and wrong sequence ids over a real socket."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pymysql
import pytest
from sdm_proxy.control import catalog, roles
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire.mysql import start_mysql_listener
from sdm_proxy.wire.mysql.packets import frame

from tests.support.accounts import free_port
from tests.wire.mysql import mysql_raw as raw
from tests.wire.mysql.mysql_stack import DATASOURCE

pytestmark = pytest.mark.mysql


def _denied(gw, since: int, **match) -> list[dict]:
    """access.denied events after the first ``since`` ones that match (they are posted just after the fact)."""
    def find():
        events = gw.events("access.denied")[since:]
        return [e for e in events if all(e.get(k) == v for k, v in match.items()) and e["protocol"] == "mysql"]
    return gw.wait_for(find, what=f"access.denied {match}")


def _refused(gw, *, expect_code: int = 1045, **kw) -> pymysql.err.OperationalError:
    with pytest.raises(pymysql.err.OperationalError) as info:
        gw.connect(**kw)
    assert info.value.args[0] == expect_code, info.value.args
    return info.value


def _serves(gw) -> None:
    with gw.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 'alive'")
        assert cur.fetchone() == ("alive",)


@pytest.fixture(scope="module")
def extra_datasources(mysql_gateway):
    """`down`: a MySQL datasource nothing listens on; `pgtype`: a PostgreSQL one; `badpw`: a wrong password."""
    st = mysql_gateway.state
    login = mysql_gateway.db.logins["read-only"]
    catalog.add_datasource(st.cp, st.admin, "down", type="mysql", host="127.0.0.1", port=free_port(), database="x")
    catalog.add_credential(st.cp, st.admin, "down", "read-only", username="u", secret=SecretValue(b"p"))
    catalog.add_datasource(st.cp, st.admin, "pgtype", type="postgres", host="127.0.0.1", port=free_port(),
                           database="x")
    catalog.add_credential(st.cp, st.admin, "pgtype", "read-only", username="u", secret=SecretValue(b"p"))
    catalog.add_datasource(st.cp, st.admin, "badpw", type="mysql", host="127.0.0.1", port=mysql_gateway.db.port,
                           database=mysql_gateway.db.database)
    catalog.add_credential(st.cp, st.admin, "badpw", "read-only", username=login.username,
                           secret=SecretValue(b"not-the-password"))
    roles.create_role(st.cp, st.admin, "extras")
    for ds in ("down", "pgtype", "badpw"):
        roles.lease(st.cp, st.admin, "extras", ds, "read-only")
    roles.assign_role(st.cp, st.admin, "extras", "ann")


def test_wrong_token(mysql_gateway):
    gw = mysql_gateway
    n = len(gw.events("access.denied"))
    err = _refused(gw, token="sdms.not-a-real-token")
    assert "sdms.not-a-real-token" not in err.args[1]
    assert _denied(gw, n, user=None, datasource=DATASOURCE)
    _serves(gw)


def test_expired_token(mysql_gateway):
    gw = mysql_gateway
    session = gw.new_token("ann", ttl=timedelta(seconds=1))
    time.sleep(1.5)
    n = len(gw.events("access.denied"))
    err = _refused(gw, token=session["token"])
    assert "expired" in err.args[1]
    assert _denied(gw, n, datasource=DATASOURCE)


def test_no_lease_and_unknown_datasource_and_no_datasource(mysql_gateway):
    gw = mysql_gateway
    n = len(gw.events("access.denied"))
    err = _refused(gw, user="carl", credential="restricted")
    assert "no lease" in err.args[1]
    assert _denied(gw, n, user="carl")
    err = _refused(gw, database="no-such-datasource")
    assert "no-such-datasource" in err.args[1]
    n = len(gw.events("access.denied"))
    err = _refused(gw, database=None)
    assert "no datasource given" in err.args[1]
    assert _denied(gw, n, error="no datasource given: set the database to the datasource name")


def test_sqlstate_of_a_denial_is_28000(mysql_gateway):
    sock, _ = raw.connect(mysql_gateway.host, mysql_gateway.port)
    packets = raw.exchange(sock, raw.hello("read-only", "sdms.bogus"))
    seq, payload = packets[-1]
    assert raw.err_code(payload) == 1045 and payload[3:9] == b"#28000" and seq == 2


def test_datasource_of_another_protocol(mysql_gateway, extra_datasources):
    gw = mysql_gateway
    n = len(gw.events("access.denied"))
    err = _refused(gw, database="pgtype")
    assert "postgres datasource" in err.args[1]
    assert _denied(gw, n, user="ann", datasource="pgtype")


def test_unreachable_upstream_is_a_clean_error(mysql_gateway, extra_datasources):
    gw = mysql_gateway
    err = _refused(gw, expect_code=2003, database="down")
    assert "cannot reach datasource down" in err.args[1]
    end = gw.wait_for(lambda: [e for e in gw.events("session.end") if e["datasource"] == "down"],
                      what="session.end for the failed login")
    assert end[-1]["status"] == "error" and "cannot reach" in end[-1]["error"]
    _serves(gw)


def test_upstream_refusing_the_credential(mysql_gateway, extra_datasources):
    err = _refused(mysql_gateway, database="badpw")
    assert "refused the login as" in err.args[1] and "not-the-password" not in err.args[1]


def test_unknown_and_refused_commands_keep_the_connection(mysql_gateway):
    with mysql_gateway.connect() as conn, conn.cursor() as cur:
        for command in (0x12, 0x08, 0x1D, 0x60, 0xEE):  # BINLOG_DUMP, SHUTDOWN, DAEMON, unknown ones
            conn._execute_command(command, b"")
            with pytest.raises(pymysql.err.OperationalError) as info:
                conn._read_ok_packet()
            assert info.value.args[0] == 1047
        conn._execute_command(0x1B, b"\x00\x00")  # SET_OPTION multi-statements on: refused
        with pytest.raises(pymysql.err.MySQLError) as info:
            conn._read_ok_packet()
        assert info.value.args[0] == 1235
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


# ---- malformed input over a real socket -----------------------------------------------------------

ALLOWED_PRE_LOGIN = {1043, 1045, 1153, 1156, 1158, 1251, 3159}


def _assert_clean_pre_login(packets: list[tuple[int, bytes]]) -> int | None:
    """Only an AuthSwitchRequest and one final ERR may follow the greeting."""
    code = None
    for i, (seq, payload) in enumerate(packets):
        if payload[:1] == b"\xfe":
            assert payload.startswith(b"\xfemysql_clear_password\x00"), payload
        else:
            code = raw.err_code(payload)
            assert code in ALLOWED_PRE_LOGIN, (code, payload)
            assert payload[3:4] == b"#" and i == len(packets) - 1, "ERR must be the last packet"
    return code


@pytest.mark.parametrize("data, code", [
    (frame(b"\x01\x02", 1), 1043),  # a truncated HandshakeResponse
    (frame(b"\xff" * 40, 1), 1043),  # garbage
    (b"\xff\xff\xff\x01" + b"x" * 20, 1153),  # a huge length: refused before the body arrives
    (frame(b"\x00" * 40, 5), 1156),  # wrong sequence id
    (b"\x05\x00\x00", None),  # half a header, then EOF
    (raw.hello("read-only", "tok")[:30], None),  # truncated body, then EOF
])
def test_malformed_login_packets(mysql_gateway, data, code):
    sock, greeting = raw.connect(mysql_gateway.host, mysql_gateway.port)
    assert greeting[0] == 10  # HandshakeV10
    packets = raw.exchange(sock, data)
    got = _assert_clean_pre_login(packets)
    if code is not None:
        assert got == code
    _serves(mysql_gateway)


def test_old_clients_without_plugin_auth_are_refused_cleanly(mysql_gateway):
    sock, _ = raw.connect(mysql_gateway.host, mysql_gateway.port)
    caps = raw.CLIENT_CAPS & ~0x80000 & ~0x200000
    payload = raw.build_handshake_response(capabilities=caps, username="read-only", auth_response=b"x" * 20,
                                           database=DATASOURCE)
    packets = raw.exchange(sock, frame(payload, 1))
    assert _assert_clean_pre_login(packets) == 1251


@pytest.mark.parametrize("data, code", [
    (frame(b"\x03SELECT 1", 3), 1156),  # wrong sequence id on a command
    (b"\xff\xff\xff\x00" + b"\x03" + b"x" * 100, None),  # a frame announcing 16 MiB, then EOF
    (frame(b"", 0), 1158),  # an empty command packet
    (frame(b"\x17\x01", 0), 1158),  # COM_STMT_EXECUTE without a statement id
    # SEND_LONG_DATA shorter than its header: MySQL would answer with an ERR where none is expected.
    (frame(b"\x18\x01\x00\x00\x00", 0) + frame(b"\x03SELECT 1", 0), 1158),
])
def test_malformed_commands(mysql_gateway, data, code):
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    packets = raw.exchange(sock, data)
    if code is not None:
        assert raw.err_code(packets[-1][1]) == code and packets[-1][0] == 1
    _serves(gw)


def test_statement_ids_the_gateway_never_saw_prepared_are_not_relayed(mysql_gateway):
    """Their record could not say what runs. EXECUTE, FETCH and RESET get the server's own 1243;
    CLOSE and SEND_LONG_DATA, which the server ignores for an unknown id, get no answer, so the
    next command's answer is still its own."""
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    unknown = (77).to_bytes(4, "little")
    packets = raw.exchange(sock, b"".join(frame(p, 0) for p in (
        b"\x17" + unknown + b"\x00\x01\x00\x00\x00",  # EXECUTE
        b"\x1c" + unknown + b"\x01\x00\x00\x00",  # FETCH
        b"\x1a" + unknown,  # RESET
        b"\x18" + unknown + b"\x00\x00data",  # SEND_LONG_DATA
        b"\x19" + unknown,  # CLOSE
        b"\x03SELECT 'unknown ids left no answer behind'",
    )))
    errors = [payload for _, payload in packets[:3]]
    assert [raw.err_code(p) for p in errors] == [1243, 1243, 1243]
    assert b"(77) given to mysqld_stmt_execute" in errors[0] and b"mysqld_stmt_reset" in errors[2]
    assert any(b"unknown ids left no answer behind" in payload for _, payload in packets[3:])
    assert raw.err_code(packets[-1][1]) is None
    gw.query_events("SELECT 'unknown ids left no answer behind'")  # recorded, so the EXECUTE would be too
    assert not [e for e in gw.events("query") if "prepared statement 77" in (e["query"] or "")]


def test_a_refused_prepare_leaves_no_last_statement_behind(mysql_gateway):
    """MariaDB's connectors pipeline PREPARE and EXECUTE(0xFFFFFFFF, "the statement just
    prepared"). When the gateway refuses the PREPARE, that EXECUTE must not run the statement
    prepared before it."""
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    packets = raw.exchange(sock, b"".join(frame(p, 0) for p in (
        b"\x16SELECT 'the earlier statement'",
        b"\x16KILL 5",  # refused by the gateway, never relayed
        b"\x17\xff\xff\xff\xff\x00\x01\x00\x00\x00",  # EXECUTE the last prepared statement
    )))
    codes = [raw.err_code(payload) for _, payload in packets]
    assert b"KILL cannot be prepared" in packets[-2][1] and codes[-1] == 1243, codes
    assert not any(b"the earlier statement" in payload for _, payload in packets[-2:])


def test_oversized_command_is_refused_before_it_is_buffered(mysql_gateway):
    gw = mysql_gateway
    cp = gw.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))

    async def start():
        return await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=cp.audit,
                                          max_command_packet=1 << 20)

    listener = gw.loop.run(start())
    try:
        sock = raw.login(gw.host, listener.port, "read-only", gw.tokens["ann"])
        packets = raw.exchange(sock, b"\xff\xff\xff\x00\x03" + b"x" * 1000)
        assert raw.err_code(packets[-1][1]) == 1153
    finally:
        gw.loop.run(listener.close())


@pytest.mark.parametrize("command", [b"\x03", b"\x16"], ids=["COM_QUERY", "COM_STMT_PREPARE"])
def test_a_statement_longer_than_the_audit_keeps_is_refused_not_run(mysql_gateway, command):
    """The audit keeps 1 MiB of statement text; MySQL takes 64 MiB. A longer statement would have run
    with only its first MiB on record (its real part hidden after a comment): refused, as a server
    past max_allowed_packet refuses, and the PostgreSQL side does the same."""
    from sdm_proxy.wire.mysql.session_audit import QUERY_TEXT_LIMIT

    gw = mysql_gateway
    marker = f"hidden_{command[0]}_after_a_long_comment"
    sql = "/*" + "x" * QUERY_TEXT_LIMIT + f"*/ SELECT '{marker}'"
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    packets = raw.exchange(sock, frame(command + sql.encode(), 0))
    seq, payload = packets[-1]
    assert raw.err_code(payload) == 1153 and seq == 1 and b"longer than" in payload
    assert len(packets) == 1  # the ERR and nothing else: no result, the gateway hung up
    assert not [e for e in gw.events("query") if marker in (e["query"] or "")]
    # Exactly at the limit still runs, and is recorded whole.
    fits = "/*" + "x" * (QUERY_TEXT_LIMIT - 60) + f"*/ SELECT 'fits_{command[0]}'"
    assert len(fits) <= QUERY_TEXT_LIMIT
    with gw.connect("ann", "read-only") as conn, conn.cursor() as cur:
        cur.execute(fits)
        assert cur.fetchone() == (f"fits_{command[0]}",)
    [event] = gw.query_events(f"SELECT 'fits_{command[0]}'")
    assert event["query"] == fits


def test_auth_timeout_and_too_many_connections(mysql_gateway):
    gw = mysql_gateway
    cp = gw.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))

    async def start():
        return await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=cp.audit,
                                          auth_timeout=0.5, max_connections=1)

    listener = gw.loop.run(start())
    try:
        first, _ = raw.connect(gw.host, listener.port)
        second = socket.create_connection((gw.host, listener.port), timeout=10)
        packets = raw.exchange(second, b"")
        assert [raw.err_code(p) for _, p in packets] == [1040]
        packets = raw.read_packets(first)
        assert raw.err_code(packets[-1][1]) == 1043 and b"timeout" in packets[-1][1]
        first.close()
    finally:
        gw.loop.run(listener.close())


class SwitchableAudit:
    """The real AuditLog, with a switch that makes every append fail as a broken disk would."""

    def __init__(self, real):
        self.real = real
        self.down = False

    def append_many(self, events, bodies=None, only_new=False):
        if self.down:
            raise AuditUnavailable("audit log unavailable: disk full (test); the action was refused")
        return self.real.append_many(events, only_new=only_new)


def test_statements_are_refused_when_the_audit_log_is_down(mysql_gateway):
    gw = mysql_gateway
    audit = SwitchableAudit(gw.cp.audit)
    client = in_process_unlock_client(gw.cp, enrol_local_proxy(gw.cp))

    async def start():
        return await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=audit)

    listener = gw.loop.run(start())
    try:
        with gw.connect("bob", "superuser", port=listener.port, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS audit_fail_closed (v INT)")
            cur.execute("DELETE FROM audit_fail_closed")
            audit.down = True
            with pytest.raises(pymysql.err.OperationalError) as info:
                cur.execute("INSERT INTO audit_fail_closed VALUES (1)")
            assert info.value.args[0] == 1105 and "audit log unavailable" in info.value.args[1]
            audit.down = False
            cur.execute("SELECT COUNT(*) FROM audit_fail_closed")
            assert cur.fetchone() == (0,)  # refused, never run
            cur.execute("DROP TABLE audit_fail_closed")
        audit.down = True
        with pytest.raises(pymysql.err.OperationalError) as info:  # no session.start: no login
            gw.connect(port=listener.port)
        assert "audit log unavailable" in info.value.args[1]
    finally:
        audit.down = False
        gw.loop.run(listener.close())


@pytest.mark.parametrize("command", [b"\x1f", b"\x0c\x01\x00\x00\x00"], ids=["COM_RESET_CONNECTION", "COM_PROCESS_KILL"])
def test_a_rewritten_command_spanning_two_frames_is_refused_in_sequence(mysql_gateway, command):
    """The gateway sends its own one-frame packet upstream for these; for a client packet of two
    frames the database's answer came with sequence ids the client was not waiting for (review:
    'packets out of order' and a dropped connection)."""
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    try:
        sock.sendall(frame(command + b"\0" * 0xFFFFFF, 0))  # two frames: seq 0 and 1
        [(seq, payload)] = read_packets_until_one(sock)
        assert raw.err_code(payload) == 1047 and seq == 2, payload
        sock.sendall(frame(b"\x03SELECT 7", 0))  # still in step
        packets = read_packets_until_one(sock, until=lambda p: p[:1] in (b"\x00", b"\xfe", b"\xff") and len(p) < 12)
        assert raw.err_code(packets[-1][1]) is None and any(p.endswith(b"\x017") for _, p in packets)
    finally:
        sock.close()


def read_packets_until_one(sock, until=lambda payload: True):
    """Packets up to the first one ``until`` accepts (a whole answer, not a hang-up)."""
    from sdm_proxy.wire.mysql.packets import PacketReader

    reader, out = PacketReader(limit=1 << 20, expect_seq=None), []
    while True:
        packet = reader.next_packet()
        if packet is None:
            data = sock.recv(65536)
            assert data, f"closed after {out}"
            reader.feed(data)
            continue
        out.append((packet.seq, packet.payload))
        if until(packet.payload):
            return out
