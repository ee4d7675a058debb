"""Live policy and shutdown: a revoked session or an ended grant closes its connections within
seconds (the database connection at once; the client hears why on its next command); a draining
gateway sends ERR 1053 to idle clients and lets running commands finish."""

from __future__ import annotations

import asyncio
import struct
import threading
from datetime import timedelta

import pymysql
import pytest
from sdm_proxy.control import grants, roles, sessions
from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
from sdm_proxy.wire.mysql import start_mysql_listener

from tests.wire.mysql.mysql_stack import DATASOURCE
from tests.wire.stack import make_policy_check

pytestmark = pytest.mark.mysql


def _upstream_thread(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return cur.fetchone()[0]


def _upstream_gone(gw, thread_id: int) -> bool:
    with gw.direct() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,))
        return cur.fetchone()[0] == 0


def _next_query_error(conn) -> pymysql.err.MySQLError:
    with pytest.raises(pymysql.err.MySQLError) as info, conn.cursor() as cur:
        cur.execute("SELECT 1")
    return info.value


def _session_end(gw, session_id: str) -> dict:
    ends = gw.wait_for(lambda: [e for e in gw.events("session.end")
                                if e["session_id"] == session_id and e["protocol"] == "mysql"],
                       what="session.end of the closed connection")
    return ends[-1]


def test_revoked_session_closes_the_live_connection(mysql_gateway):
    gw = mysql_gateway
    session = gw.new_token("ann")
    conn = gw.connect(token=session["token"])
    thread = _upstream_thread(conn)
    sessions.revoke_session(gw.cp, gw.state.admin, session["id"])
    gw.wait_for(lambda: _upstream_gone(gw, thread), 15, what="the upstream connection to close")
    end = _session_end(gw, session["id"])  # recorded when the database connection closed
    assert end["status"] == "denied" and "revoked" in end["error"]
    err = _next_query_error(conn)
    assert err.args[0] == 1927 and "revoked" in err.args[1]
    with pytest.raises(pymysql.err.MySQLError):  # and the connection is closed now
        conn.ping(reconnect=False)
    conn.close()
    assert len([e for e in gw.events("session.end")
                if e["session_id"] == session["id"] and e["protocol"] == "mysql"]) == 1
    with pytest.raises(pymysql.err.OperationalError) as info:
        gw.connect(token=session["token"])
    assert info.value.args[0] == 1045 and "revoked" in info.value.args[1]


def test_revocation_during_a_running_query_ends_it_with_an_error(mysql_gateway):
    gw = mysql_gateway
    session = gw.new_token("ann")
    conn = gw.connect(token=session["token"], read_timeout=30)
    outcome: dict = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(20) /* revoked-mid-query */")
                outcome["value"] = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    gw.wait_for(lambda: gw.query_events("revoked-mid-query"), what="the query to start")
    sessions.revoke_session(gw.cp, gw.state.admin, session["id"])
    t.join(25)
    assert "error" in outcome, outcome
    assert outcome["error"].args[0] == 1927 and "revoked" in outcome["error"].args[1]
    conn.close()
    [event] = gw.query_events("revoked-mid-query")
    end = gw.outcome(event)
    assert end["status"] == "cancelled" and "revoked" in end["error"]


def test_grant_expiring_mid_session_closes_it(mysql_gateway):
    gw = mysql_gateway
    grants.create_grant(gw.cp, gw.state.admin, "carl", DATASOURCE, "restricted", timedelta(seconds=3))
    conn = gw.connect("carl", "restricted")
    thread = _upstream_thread(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone()[0] == 600
    gw.wait_for(lambda: _upstream_gone(gw, thread), 20, what="the upstream connection to close")
    err = _next_query_error(conn)
    assert err.args[0] == 1927 and "expired" in err.args[1]
    conn.close()
    with pytest.raises(pymysql.err.OperationalError) as info:
        gw.connect("carl", "restricted")
    assert info.value.args[0] == 1045


def test_losing_the_role_closes_the_connection_but_not_others(mysql_gateway):
    gw = mysql_gateway
    st = gw.state
    roles.create_role(st.cp, st.admin, "temp-my")
    roles.lease(st.cp, st.admin, "temp-my", DATASOURCE, "restricted")
    gw.actors["dora"] = st.add_user("dora", roles_=("temp-my",))
    gw.tokens["dora"] = gw.new_token("dora")["token"]
    other = gw.connect("ann")
    conn = gw.connect("dora", "restricted")
    thread = _upstream_thread(conn)
    roles.unassign_role(st.cp, st.admin, "temp-my", "dora")
    gw.wait_for(lambda: _upstream_gone(gw, thread), 15, what="the upstream connection to close")
    err = _next_query_error(conn)
    assert err.args[0] == 1927 and "no lease" in err.args[1]
    conn.close()
    with other.cursor() as cur:
        cur.execute("SELECT 'unaffected'")
        assert cur.fetchone() == ("unaffected",)
    other.close()


def test_access_nobody_can_confirm_ends_after_three_failed_checks(mysql_gateway):
    """A control plane that cannot be asked (state database down, proxy enrolment revoked) must
    not leave connections open for good: a revocation meanwhile would never reach them. As on the
    PostgreSQL side, three failed checks in a row end the connection."""
    gw = mysql_gateway
    cp = gw.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))
    calls = []

    async def unreachable(cred):
        calls.append(cred.session_id)
        raise ConnectionError("state database down")

    async def start():
        return await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=cp.audit,
                                          policy_check=unreachable, policy_interval=0.2)

    listener = gw.loop.run(start())
    try:
        session = gw.new_token("ann")
        conn = gw.connect(port=listener.port, token=session["token"])
        thread = _upstream_thread(conn)
        gw.wait_for(lambda: _upstream_gone(gw, thread), 15, what="the upstream connection to close")
        end = _session_end(gw, session["id"])
        assert end["status"] == "error" and "cannot confirm access" in end["error"]
        assert len(calls) == 3
        err = _next_query_error(conn)
        assert err.args[0] == 1927 and "cannot confirm access" in err.args[1]
        conn.close()
    finally:
        gw.loop.run(listener.close())


# ---- shutdown ---------------------------------------------------------------------------------------


@pytest.fixture
def own_listener(mysql_gateway):
    cp = mysql_gateway.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))

    async def start():
        return await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=cp.audit,
                                          policy_check=make_policy_check(cp), policy_interval=0.5)

    listener = mysql_gateway.loop.run(start())
    yield listener
    mysql_gateway.loop.run(listener.close())


def _read_raw_packet(conn, timeout: float = 10.0) -> tuple[int, bytes]:
    """The next packet on a PyMySQL connection's socket, read directly (an unsolicited goodbye)."""
    sock = conn._sock
    sock.settimeout(timeout)
    header = sock.recv(4, 0)
    length, seq = int.from_bytes(header[:3], "little"), header[3]
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return seq, body


def test_drain_sends_1053_to_idle_clients_and_lets_running_commands_finish(mysql_gateway, own_listener):
    gw = mysql_gateway
    port = own_listener.port
    idle = gw.connect(port=port)
    busy = gw.connect(port=port)
    done: dict = {}

    def run():
        with busy.cursor() as cur:
            cur.execute("SELECT SLEEP(2), 'finished' /* drain-busy */")
            done["row"] = cur.fetchone()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    gw.wait_for(lambda: gw.query_events("drain-busy"), what="the busy query to start")
    drained = asyncio.run_coroutine_threadsafe(own_listener.drain(timeout=20), gw.loop.loop)
    seq, payload = _read_raw_packet(idle)
    assert seq == 0 and payload[0] == 0xFF
    code = struct.unpack_from("<H", payload, 1)[0]
    assert code == 1053 and b"shutting down" in payload
    t.join(20)
    assert done["row"] == (0, "finished")  # the running statement completed
    drained.result(30)
    with pytest.raises(pymysql.err.OperationalError):  # nothing is accepted any more
        gw.connect(port=port)
    idle.close()
    busy.close()


def test_close_ends_everything_now(mysql_gateway, own_listener):
    gw = mysql_gateway
    conn = gw.connect(port=own_listener.port, read_timeout=30)
    outcome: dict = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(20) /* close-now */")
        except pymysql.err.MySQLError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    gw.wait_for(lambda: gw.query_events("close-now"), what="the query to start")
    gw.loop.run(own_listener.close())
    t.join(25)
    assert outcome["error"].args[0] in (1053, 2013), outcome
    conn.close()
