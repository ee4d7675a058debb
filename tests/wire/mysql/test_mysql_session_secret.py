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


def test_a_kill_side_connection_drops_the_secret_once_logged_in(mysql_server):
    """KILL of a thread under another credential runs on a short connection of its own
    (``run_one_statement``): its credential's secret must go once that login is done, not live on
    while the statement runs."""
    import asyncio
    import gc
    import weakref

    from sdm_proxy.unlock.client import DatasourceInfo, UnlockedCredential
    from sdm_proxy.vault.secret import SecretValue
    from sdm_proxy.wire.mysql.upstream import run_one_statement

    login = mysql_server.logins["read-only"]
    cred = UnlockedCredential(
        user="ann", session_id="s", credential="read-only", db_user=login.username, version=1, via="role:r",
        datasource=DatasourceInfo("my", "mysql", mysql_server.host, mysql_server.port, mysql_server.database,
                                  "disable", None),
        access_expires_at=None, secret=SecretValue(login.password.encode()))
    held = weakref.ref(cred)

    async def main(handed_over):
        task = asyncio.ensure_future(run_one_statement(handed_over.pop(), "DO SLEEP(1)", timeout=10))
        await asyncio.sleep(0.5)  # logged in long ago (a local server); the statement still runs
        assert not task.done()
        gc.collect()
        alive = held() is not None
        payload, _ = await task
        return alive, payload

    handed_over = [cred]
    del cred
    alive, payload = asyncio.run(main(handed_over))
    assert payload[:1] == b"\x00"  # the statement's OK
    assert not alive, "the credential (and its secret) outlived the login"
