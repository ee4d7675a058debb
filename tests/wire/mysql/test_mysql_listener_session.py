"""Session mechanics the gateway handles itself: COM_CHANGE_USER (a new unlock and upstream login on
the same client connection), backpressure (a client that stops reading stops the database reads, the
gateway does not buffer the result), and connection ids."""

from __future__ import annotations

import socket
import time

import pymysql
import pytest
from sdm_proxy.wire.mysql.channel import CLIENT_WRITE_HIGH
from sdm_proxy.wire.mysql.packets import frame

from tests.wire.mysql import mysql_raw as raw
from tests.wire.mysql.mysql_stack import DATASOURCE

pytestmark = pytest.mark.mysql


def _change_user(conn: pymysql.Connection, credential: str, token: str, database: str = DATASOURCE,
                 charset: int = 45):
    """COM_CHANGE_USER over PyMySQL's socket (it has no API): answer the token prompt, read the result."""
    payload = (credential.encode() + b"\0" + b"\x00" + database.encode() + b"\0"
               + charset.to_bytes(2, "little") + b"mysql_native_password\0")
    conn._execute_command(0x11, payload)
    first = conn._read_packet()
    if first.is_error_packet():
        return first
    switch = first.get_all_data()
    assert switch.startswith(b"\xfemysql_clear_password\0"), switch
    conn.write_packet(token.encode() + b"\0")
    return conn._read_packet()


def test_change_user_logs_in_again_with_a_new_token(mysql_gateway):
    gw = mysql_gateway
    with gw.connect() as conn:
        gateway_id = conn.thread_id()
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == "sdm_readonly@%"
        _change_user(conn, "superuser", gw.tokens["bob"])
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER() /* after-change-user */")
            assert cur.fetchone()[0] == "sdm_super@%"
        assert conn.thread_id() == gateway_id  # the same client connection
    [event] = gw.query_events("after-change-user")
    assert event["user"] == "bob" and event["credential"] == "superuser"
    ends = [e for e in gw.events("session.end") if (e.get("details") or {}).get("connection_id") == gateway_id]
    assert ends and ends[0]["user"] == "ann" and ends[0]["error"] == "COM_CHANGE_USER"


def test_change_user_records_and_guards_the_new_charset(mysql_gateway):
    """session.start after COM_CHANGE_USER names the charset the new login asked for (review: it
    kept the first login's), and a GBK-family one is refused like at login."""
    gw = mysql_gateway
    with gw.connect() as conn:
        gateway_id = conn.thread_id()
        _change_user(conn, "read-only", gw.tokens["ann"], charset=8)  # latin1_swedish_ci
        with conn.cursor() as cur:
            cur.execute("SELECT @@character_set_client")
            assert cur.fetchone()[0] == "latin1"
    starts = [e for e in gw.events("session.start") if (e.get("details") or {}).get("connection_id") == gateway_id]
    assert sorted(e["details"]["charset"] for e in starts) == [8, 45]
    conn = gw.connect()
    with pytest.raises(pymysql.err.MySQLError) as info:
        _change_user(conn, "read-only", gw.tokens["ann"], charset=28).raise_for_error()  # gbk_chinese_ci
    assert info.value.args[0] == 1115
    conn.close()


def test_change_user_refused_closes_the_connection(mysql_gateway):
    gw = mysql_gateway
    conn = gw.connect()
    with pytest.raises(pymysql.err.OperationalError) as info:
        packet = _change_user(conn, "superuser", gw.tokens["ann"])  # ann holds no superuser lease
        packet.raise_for_error()
    assert info.value.args[0] == 1045
    with pytest.raises(pymysql.err.MySQLError):
        conn.ping(reconnect=False)
    conn.close()


def test_a_client_that_stops_reading_is_not_buffered(mysql_gateway):
    """~100 MB of result; the client reads nothing for a while: the gateway holds at most a few of
    the database's chunks (reading from the database pauses), then everything arrives intact."""
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    rows, width = 100_000, 1000
    sql = f"SELECT REPEAT('x', {width}) FROM seq_1_to_{rows} /* backpressure */"
    sock.sendall(frame(b"\x03" + sql.encode(), 0))
    gw.wait_for(lambda: gw.query_events("/* backpressure */"), what="the query to start")
    time.sleep(1.5)  # the database could have sent everything by now; the gateway must not have taken it
    buffered = [s.client.write_buffer_size for s in list(gw.listener.sessions)]
    assert max(buffered) <= CLIENT_WRITE_HIGH + (1 << 20), buffered
    total = 0
    sock.settimeout(30)
    while True:
        chunk = sock.recv(1 << 20)
        total += len(chunk)
        if not chunk or total >= rows * (width + 7):
            break
    assert total >= rows * (width + 4)
    sock.close()
    [event] = gw.query_events("/* backpressure */")
    assert gw.outcome(event, timeout=30)["rows"] == rows


def test_connection_ids_are_unique_and_not_the_upstream_ones(mysql_gateway):
    gw = mysql_gateway
    conns = [gw.connect() for _ in range(5)]
    try:
        ids = {c.thread_id() for c in conns}
        assert len(ids) == 5
        upstream = set()
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                upstream.add(cur.fetchone()[0])
        assert not ids & upstream
    finally:
        for c in conns:
            c.close()
