"""DESIGN §2.1 on the MySQL side: after the upstream login, a session keeps the credential's names,
never its password (the login task held it only while it ran)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.mysql


def test_a_live_mysql_session_holds_no_secret(mysql_gateway):
    gw = mysql_gateway
    password = gw.db.logins["superuser"].password
    with gw.connect("bob", "superuser", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 /* no-secret-held */")
        live = [s for s in list(gw.listener.sessions) if s.cred is not None and s.cred.credential == "superuser"]
        assert live
        for session in live:
            assert session.cred.secret.reveal() == b""
            assert password not in repr(vars(session))
