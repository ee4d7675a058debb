"""Fail closed (DESIGN §2.4): when the audit log cannot be written, statements are refused."""

from __future__ import annotations

import psycopg
import pytest
from sdm_proxy.control.unlock import unlock
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.gateway import enrol_local_proxy
from sdm_proxy.unlock.client import InProcessUnlockClient
from sdm_proxy.wire.postgres import start_postgres_listener

pytestmark = pytest.mark.postgres


class SwitchableAudit:
    """The real AuditLog, with a switch that makes every append fail as a broken disk would."""

    def __init__(self, real):
        self.real = real
        self.down = False

    def append_many(self, events, bodies=None, only_new=False):
        if self.down:
            raise AuditUnavailable("audit log unavailable: disk full (test); the action was refused")
        return self.real.append_many(events, only_new=only_new)


@pytest.fixture(scope="module")
def flaky(gateway):
    audit = SwitchableAudit(gateway.cp.audit)
    client = InProcessUnlockClient(enrol_local_proxy(gateway.cp), lambda body: unlock(gateway.cp, body))

    async def start():
        return await start_postgres_listener("127.0.0.1", 0, unlock_client=client, audit_log=audit)

    listener = gateway.loop.run(start())
    yield audit, listener.port
    audit.down = False
    gateway.loop.run(listener.close())


def test_statement_is_refused_and_not_run_when_the_audit_log_is_down(gateway, flaky):
    audit, port = flaky
    with psycopg.connect(**gateway.kwargs("bob", "superuser", port=port), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS audit_fail_closed (v int)")
        conn.execute("TRUNCATE audit_fail_closed")
        audit.down = True
        try:
            with pytest.raises(psycopg.errors.CannotConnectNow, match="statement refused: audit log unavailable"):
                conn.execute("INSERT INTO audit_fail_closed VALUES (1)")
        finally:
            audit.down = False
        # A lone simple query is refused with an ERROR: the connection is still usable, text that
        # waits for the server to report its client_encoding included (the refused query never ran).
        assert conn.execute("SELECT 'caf\u00e9'").fetchone() == ("caf\u00e9",)
        assert conn.execute("SELECT count(*) FROM audit_fail_closed").fetchone() == (0,)
        audit.down = True
        try:
            with pytest.raises(psycopg.OperationalError, match="audit log unavailable"):
                conn.execute("INSERT INTO audit_fail_closed VALUES (%s)", (2,))  # extended: FATAL
        finally:
            audit.down = False
    with psycopg.connect(**gateway.kwargs("bob", "superuser", port=port)) as conn:
        assert conn.execute("SELECT count(*) FROM audit_fail_closed").fetchone() == (0,)
        conn.execute("DROP TABLE audit_fail_closed")
        conn.commit()


def test_login_is_refused_when_session_start_cannot_be_recorded(gateway, flaky):
    audit, port = flaky
    audit.down = True
    try:
        with pytest.raises(psycopg.OperationalError, match="audit log unavailable"):
            psycopg.connect(**gateway.kwargs("ann", port=port))
    finally:
        audit.down = False
    with psycopg.connect(**gateway.kwargs("ann", port=port)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
