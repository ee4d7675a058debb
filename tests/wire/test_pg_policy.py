"""Live policy: a revoked session or an ended grant closes its open connections within seconds."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from sdm_proxy.control import grants, roles, sessions

pytestmark = pytest.mark.postgres


def _wait_closed(conn: psycopg.Connection, timeout: float = 15.0) -> psycopg.Error:
    """Poll with a cheap query until the gateway's FATAL arrives; return the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return exc
        time.sleep(0.2)
    raise AssertionError("the connection was not closed")


def test_revoked_session_closes_live_connection_and_cannot_reconnect(gateway):
    session = gateway.new_token("ann")
    conn = psycopg.connect(**gateway.kwargs("ann", token=session["token"]), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    sessions.revoke_session(gateway.cp, gateway.state.admin, session["id"])
    exc = _wait_closed(conn)
    assert "session revoked" in str(exc)
    assert conn.closed or conn.broken
    conn.close()
    ends = gateway.wait_for(lambda: [e for e in gateway.events("session.end")
                                     if e["session_id"] == session["id"] and e["protocol"] == "postgres"],
                            what="session.end of the closed connection")
    assert ends[-1]["status"] == "denied" and "revoked" in ends[-1]["error"]
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        psycopg.connect(**gateway.kwargs("ann", token=session["token"]))


def test_grant_expiring_mid_session_closes_it(gateway):
    """carl has no lease; a 3-second grant lets him in, and its end closes the connection."""
    grants.create_grant(gateway.cp, gateway.state.admin, "carl", "pgtest", "restricted", timedelta(seconds=3))
    with psycopg.connect(**gateway.kwargs("carl", "restricted"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == gateway.pg.logins["restricted"].username
        exc = _wait_closed(conn)
        assert "expired" in str(exc)
    with pytest.raises(psycopg.OperationalError, match="no lease"):
        psycopg.connect(**gateway.kwargs("carl", "restricted"))


def test_revoked_grant_closes_the_connection(gateway):
    grants.create_grant(gateway.cp, gateway.state.admin, "carl", "pgtest", "md5", timedelta(hours=1))
    with psycopg.connect(**gateway.kwargs("carl", "md5"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        grants.revoke_grants(gateway.cp, gateway.state.admin, "carl", "pgtest", "md5")
        exc = _wait_closed(conn)
        assert "grant revoked" in str(exc) or "no lease" in str(exc)


def test_losing_the_role_closes_the_connection_but_not_others(gateway):
    st = gateway.state
    roles.create_role(st.cp, st.admin, "temp-analysts")
    roles.lease(st.cp, st.admin, "temp-analysts", "pgtest", "restricted")
    gateway.actors["dora"] = st.add_user("dora", roles_=("temp-analysts",))
    gateway.tokens["dora"] = gateway.new_token("dora")["token"]
    other = psycopg.connect(**gateway.kwargs("ann"), autocommit=True)
    with psycopg.connect(**gateway.kwargs("dora", "restricted"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        roles.unassign_role(st.cp, st.admin, "temp-analysts", "dora")
        exc = _wait_closed(conn)
        assert "no lease" in str(exc)
    assert other.execute("SELECT 'unaffected'").fetchone() == ("unaffected",)
    other.close()
