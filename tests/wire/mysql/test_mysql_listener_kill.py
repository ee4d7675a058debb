"""``KILL [QUERY] <id>`` through the gateway: ids are the gateway's, mapped to upstream threads;
only the owner (the same analyst) may kill, whatever credential the query runs under."""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

pytestmark = pytest.mark.mysql


def _sleeper(conn, seconds: int = 30, tag: str = "kill-me"):
    """Run SELECT SLEEP(seconds) on a thread; returns (thread, result dict)."""
    result: dict = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT SLEEP({seconds}) /* {tag} */")
                result["value"] = cur.fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded
            result["error"] = exc
        result["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def _wait_running(gw, tag: str, timeout: float = 10.0) -> None:
    """Until the database shows the statement running (so the KILL has something to stop)."""
    def running():
        with gw.direct() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s", (f"%{tag}%",))
            return cur.fetchone()[0] > 0
    gw.wait_for(running, timeout, what=f"{tag} running")


def _interrupted(result: dict) -> bool:
    # SLEEP() interrupted returns 1 (MariaDB), or the statement fails with 1317 (query interrupted).
    return result.get("value") == 1 or getattr(result.get("error"), "args", [None])[0] == 1317


def test_kill_query_stops_a_sleep_within_two_seconds(mysql_gateway):
    gw = mysql_gateway
    victim, killer = gw.connect(), gw.connect()
    try:
        t, result = _sleeper(victim, tag="kill-2s")
        _wait_running(gw, "kill-2s")
        started = time.monotonic()
        with killer.cursor() as cur:
            cur.execute(f"KILL QUERY {victim.thread_id()}")
        t.join(10)
        elapsed = result["at"] - started
        assert _interrupted(result), result
        assert elapsed < 2.0, f"KILL QUERY took {elapsed:.2f}s"
        with victim.cursor() as cur:  # only the statement was stopped: the connection lives
            cur.execute("SELECT 'still here'")
            assert cur.fetchone() == ("still here",)
    finally:
        victim.close()
        killer.close()
    [kill] = gw.query_events(f"KILL QUERY {victim.thread_id()}")
    assert kill["user"] == "ann" and kill["details"]["kill"]["connection_id"] == victim.thread_id()
    assert kill["details"]["kill"]["query_only"] is True
    [sleep] = gw.query_events("kill-2s")
    assert gw.outcome(sleep)["status"] in ("ok", "cancelled")


def test_another_users_connection_cannot_be_killed(mysql_gateway):
    gw = mysql_gateway
    victim = gw.connect("bob", "restricted")
    stranger = gw.connect("ann")
    try:
        t, result = _sleeper(victim, seconds=3, tag="not-yours")
        _wait_running(gw, "not-yours")
        for sql in (f"KILL QUERY {victim.thread_id()}", f"KILL {victim.thread_id()}",
                    f"KILL CONNECTION {victim.thread_id()}"):
            with stranger.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute(sql)
            assert info.value.args[0] == 1095 and "not owner" in info.value.args[1]
        with pytest.raises(pymysql.err.MySQLError) as info:  # COM_PROCESS_KILL too
            stranger.kill(victim.thread_id())
        assert info.value.args[0] == 1095
        t.join(10)
        assert result.get("value") == 0, result  # the sleep ran to its end, untouched
        with stranger.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        victim.close()
        stranger.close()
    denied = [e for e in gw.events("access.denied") if e["query"] and str(victim.thread_id()) in e["query"]]
    assert denied and all(e["user"] == "ann" for e in denied)


def test_kill_of_unknown_ids_and_unsupported_forms(mysql_gateway):
    with mysql_gateway.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute("KILL QUERY 4294967295")
        assert info.value.args[0] == 1094
        for sql in ("KILL QUERY @x", "KILL QUERY ID 5", "KILL USER sdm_readonly", "KILL QUERY CONNECTION_ID()"):
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute(sql)
            assert info.value.args[0] == 1235, sql
        cur.execute("SELECT 'usable'")
        assert cur.fetchone() == ("usable",)


def test_same_user_other_credential_kill_uses_a_short_upstream_connection(mysql_gateway):
    """bob's query runs as `restricted`; bob kills it from a `superuser` connection: the gateway logs in
    as `restricted` (a new unlock) to issue the KILL on the right thread."""
    gw = mysql_gateway
    victim = gw.connect("bob", "restricted")
    killer = gw.connect("bob", "superuser")
    try:
        t, result = _sleeper(victim, tag="cross-cred")
        _wait_running(gw, "cross-cred")
        started = time.monotonic()
        killer.kill(victim.thread_id())  # COM_PROCESS_KILL: the whole connection
        t.join(10)
        assert result["at"] - started < 2.0
        assert "error" in result or result.get("value") == 1, result
    finally:
        victim.close()
        killer.close()
    unlocks = [e for e in gw.events("credential.unlock") if e["user"] == "bob" and e["credential"] == "restricted"]
    assert len(unlocks) >= 2  # the victim's login and the KILL's


def test_kill_own_connection(mysql_gateway):
    gw = mysql_gateway
    conn = gw.connect()
    gateway_id = conn.thread_id()
    with conn.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as info:
        cur.execute(f"KILL {gateway_id}")
    assert info.value.args[0] in (1927, 2013)
    conn.close()
    ends = gw.wait_for(lambda: [e for e in gw.events("session.end")
                                if (e.get("details") or {}).get("connection_id") == gateway_id],
                       what="session.end of the killed connection")
    assert ends[0]["user"] == "ann"


def test_prepared_kill_is_refused(mysql_gateway):
    with mysql_gateway.connect() as conn:
        conn._execute_command(0x16, "KILL QUERY 1")
        with pytest.raises(pymysql.err.MySQLError) as info:
            conn._read_ok_packet()
        assert info.value.args[0] == 1047
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
