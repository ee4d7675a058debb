"""Every statement through the MySQL listener is in the audit log with the DESIGN §4 fields, written
before it runs, with its outcome (rows, duration, status) right after; identity comes from the session."""

from __future__ import annotations

import json
import struct

import pymysql
import pytest
from sdm_proxy.wire.mysql.messages import Status

from tests.wire.mysql import mysql_raw as raw
from tests.wire.mysql.mysql_stack import DATASOURCE
from tests.wire.mysql.raw_client import command

pytestmark = pytest.mark.mysql

TAGS = "/*sdm_cell='c%2D42',sdm_notebook='analysis%2Fq3.ipynb',sdm_kernel='k-1',sdm_execution_count='7'*/"


def test_query_events_carry_every_field(mysql_gateway):
    gw = mysql_gateway
    with gw.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, name FROM customers WHERE id <= 12 ORDER BY id {TAGS}")
        assert len(cur.fetchall()) == 12
        local = conn._sock.getsockname()
    [event] = gw.query_events("WHERE id <= 12 ORDER BY id")
    assert event["type"] == "query" and event["status"] == "started"
    assert event["user"] == "ann" and event["credential"] == "read-only" and event["datasource"] == DATASOURCE
    assert event["db_user"] == gw.db.logins["read-only"].username and event["protocol"] == "mysql"
    assert event["proxy_id"] and event["session_id"] and event["id"] and event["ts"] and event["hash"]
    assert event["client"] == {"notebook": "analysis/q3.ipynb", "cell_id": "c-42", "execution_count": 7,
                               "kernel_id": "k-1", "addr": f"{local[0]}:{local[1]}"}
    end = gw.outcome(event)
    assert end["rows"] == 12 and end["status"] == "ok" and end["error"] is None
    assert isinstance(end["duration_ms"], float) and end["duration_ms"] >= 0
    assert end["user"] == "ann" and end["session_id"] == event["session_id"]
    starts = [e for e in gw.events("session.start") if e["session_id"] == event["session_id"]
              and e["protocol"] == "mysql"]
    assert starts and starts[0]["db_user"] == event["db_user"]


def test_dml_rows_are_the_affected_rows_and_errors_are_recorded(mysql_gateway):
    gw = mysql_gateway
    with gw.connect("bob", "superuser", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS audit_rows (id INT PRIMARY KEY, v INT)")
        cur.execute("DELETE FROM audit_rows")
        cur.executemany("INSERT INTO audit_rows VALUES (%s, %s)", [(i, 0) for i in range(25)])
        cur.execute("UPDATE audit_rows SET v = 1 WHERE id < 10 /* audit-update */")
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELEC broken /* audit-syntax */")
        cur.execute("DROP TABLE audit_rows")
    [update] = gw.query_events("audit-update")
    assert update["user"] == "bob" and gw.outcome(update)["rows"] == 10
    [bad] = gw.query_events("audit-syntax")
    end = gw.outcome(bad)
    assert end["status"] == "error" and end["error"].startswith("(1064)")
    [insert] = gw.query_events("INSERT INTO audit_rows VALUES")  # executemany: one multi-row INSERT
    assert gw.outcome(insert)["rows"] == 25


def test_identity_comes_from_the_session_not_the_query(mysql_gateway):
    gw = mysql_gateway
    with gw.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 /* sdm_user='mallory' */ /*sdm_cell='forged'*/")
    [event] = gw.query_events("sdm_user='mallory'")
    assert event["user"] == "ann" and event["client"]["cell_id"] == "forged"


def test_session_start_and_end_pair_up(mysql_gateway):
    gw = mysql_gateway
    conn = gw.connect("bob", "restricted")
    gateway_id = conn.thread_id()
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM orders")
    conn.close()
    def ends():
        return [e for e in gw.events("session.end") if (e.get("details") or {}).get("connection_id") == gateway_id]
    [end] = gw.wait_for(ends, what="session.end")
    [start] = [e for e in gw.events("session.start") if (e.get("details") or {}).get("connection_id") == gateway_id]
    assert start["user"] == end["user"] == "bob" and start["session_id"] == end["session_id"]
    assert end["status"] == "ok" and end["details"]["upstream_thread"]


def test_text_that_is_not_utf8_is_kept_byte_for_byte(mysql_gateway):
    """A latin1 client's 'José' and 'Josè' are different statements: before, both were recorded
    as 'Jos\ufffd'. Bytes that are not UTF-8 are kept as \\xNN, and session.start records the
    login's charset number, so an auditor can read them as the server did."""
    gw = mysql_gateway
    with gw.connect(charset="latin1") as conn, conn.cursor() as cur:
        gateway_id = conn.thread_id()
        cur.execute("SELECT 'José' AS a, 'Josè' AS b /* latin1-audit */")
        assert cur.fetchone() == ("José", "Josè")  # relayed untouched: the server read latin1
    [event] = gw.query_events("latin1-audit")
    assert event["query"] == "SELECT 'Jos\\xe9' AS a, 'Jos\\xe8' AS b /* latin1-audit */"
    assert event["details"] == {"escaped": True}
    with gw.connect(charset="latin1") as conn, conn.cursor() as cur:  # escaped, a backslash is doubled
        cur.execute("SELECT 'é\\\\' AS c /* latin1-backslash */")
    [event] = gw.query_events("latin1-backslash")
    assert event["query"] == "SELECT '\\xe9\\\\\\\\' AS c /* latin1-backslash */" and event["details"]["escaped"]
    [start] = [e for e in gw.events("session.start") if (e.get("details") or {}).get("connection_id") == gateway_id]
    assert start["details"]["charset"] in (8, 47, 48, 49, 5, 15, 31, 94)  # a latin1 collation
    with gw.connect() as conn, conn.cursor() as cur:  # PyMySQL's default, utf8mb4: read as text
        cur.execute("SELECT 'José' /* utf8-audit */")
    [event] = gw.query_events("utf8-audit")
    assert event["query"] == "SELECT 'José' /* utf8-audit */" and event["details"] is None


def test_no_secret_in_the_audit_log_or_errors(mysql_gateway):
    gw = mysql_gateway
    with gw.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 'leak check'")
    text = json.dumps(gw.events())
    for login in gw.db.logins.values():
        assert login.password not in text
    for token in gw.tokens.values():
        assert token not in text


def test_cursor_fetches_are_recorded_with_their_rows(mysql_gateway):
    """Review: an EXECUTE that opens a cursor recorded 0 rows, and the rows (or an error) that
    COM_STMT_FETCH brought were not recorded at all."""
    gw = mysql_gateway
    sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
    caps = raw.CLIENT_CAPS
    try:
        scanner, _ = command(sock, b"\x16SELECT id AS fetched_id FROM orders WHERE id <= ? /* cursor-fetch */", caps)
        sid = scanner.prepared.statement_id
        execute = b"\x17" + struct.pack("<IBI", sid, 1, 1) + b"\x00\x01\x08\x00" + struct.pack("<q", 10)
        scanner, _ = command(sock, execute, caps)
        assert scanner.rows == 0 and scanner.status & Status.CURSOR_EXISTS
        fetched, fetches = 0, 0
        while True:
            scanner, _ = command(sock, b"\x1c" + struct.pack("<II", sid, 4), caps)
            assert scanner.error is None
            fetched, fetches = fetched + scanner.rows, fetches + 1
            if scanner.status & Status.LAST_ROW_SENT:
                break
    finally:
        sock.close()
    assert fetched == 10
    events = gw.query_events("cursor-fetch")
    recorded = [e for e in events if (e.get("details") or {}).get("command") == "COM_STMT_FETCH"]
    assert len(recorded) == fetches and all(e["details"]["prepared_statement"] == sid for e in recorded)
    assert sum(gw.outcome(e)["rows"] or 0 for e in recorded) == 10
