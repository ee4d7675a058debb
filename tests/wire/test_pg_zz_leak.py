"""Runs last (file order): after every wire test, no audit record holds a DB secret or a token."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.postgres


def test_no_secret_in_any_audit_record(gateway):
    """Every record the wire tests wrote so far, searched for every DB password and the tokens."""
    secrets = [login.password for login in gateway.pg.logins.values()] + [gateway.pg.superuser_password]
    secrets += list(gateway.tokens.values())
    assert len(gateway.events()) > 100, "runs after the other wire tests"
    text = "\n".join(str(e) for e in gateway.events())
    jsonl = gateway.state.home.audit_jsonl_path.read_text() if gateway.state.home.audit_jsonl_path.exists() else ""
    logs = "\n".join(gateway.log_records)
    for secret in secrets:
        assert secret not in text and secret not in jsonl and secret not in logs


def test_a_live_session_holds_no_secret(gateway):
    """After the upstream login, the Session keeps the credential's names, never its password."""
    import psycopg

    with psycopg.connect(**gateway.kwargs("bob", "md5")) as conn:
        conn.execute("SELECT 1")
        live = [s for s in gateway.listener.sessions if s.cred is not None and s.cred.credential == "md5"]
        assert live
        for session in live:
            assert session.cred.secret.reveal() == b""
            dump = repr(vars(session)) + repr(vars(session.upstream))
            assert gateway.pg.logins["md5"].password not in dump
