"""Warm logins (wire/postgres/spares.py): after a session logs in, the listener keeps one logged-in
spare for the next session of the same route, made with the cached SCRAM keys only. A spare must be
invisible except for speed: the right DB user, a backend nobody used before, handed out only after
the taker's own unlock, never made from a password, gone when it idles too long or the credential
rotates."""

from __future__ import annotations

import psycopg
import pytest
from sdm_proxy.control import catalog
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire.postgres import session_login as pg_login
from sdm_proxy.wire.postgres.spares import WarmSpares

pytestmark = pytest.mark.postgres


@pytest.fixture
def spares(gateway, monkeypatch):
    """A fresh WarmSpares for this test (so counts start at zero), closed afterwards."""
    ctx = gateway.listener.ctx
    fresh = WarmSpares(ctx.scram_cache, connect_timeout=ctx.connect_timeout)
    monkeypatch.setattr(ctx, "spares", fresh)
    yield fresh
    gateway.loop.run(fresh.aclose())


def _idle_backends(pg_cluster, app: str) -> list[int]:
    with psycopg.connect(**pg_cluster.connect_kwargs("superuser")) as direct:
        return [r[0] for r in direct.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'idle'", (app,))]


def _session(gateway, user="ann", credential="read-only", app="sdm-spares-test"):
    return psycopg.connect(**gateway.kwargs(user, credential, application_name=app))


def _spare_pids(spares) -> list[int]:
    return [s.conn.backend_pid for s in spares._idle.values()]


def test_the_next_session_gets_the_spare_logged_in_as_the_credential(gateway, spares, pg_cluster):
    with _session(gateway) as conn:
        first_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    [spare_pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    assert spare_pid != first_pid
    with _session(gateway) as conn:
        pid, user = conn.execute("SELECT pg_backend_pid(), current_user").fetchone()
    assert pid == spare_pid, "the second session runs on the spare's backend"
    assert user == pg_cluster.logins["read-only"].username
    assert spares.hits == 1
    starts = [e for e in gateway.events("session.start") if e["credential"] == "read-only"]
    assert len(starts) >= 2, "a session on a spare is on record like any other"


def test_a_spare_is_a_backend_nobody_used(gateway, spares):
    with _session(gateway) as conn:
        conn.execute("CREATE TEMP TABLE left_behind (x int)")
        conn.execute("SET search_path TO pg_catalog")
        conn.commit()
    gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    with _session(gateway) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0] != "pg_catalog"
        assert conn.execute("SELECT to_regclass('pg_temp.left_behind')").fetchone()[0] is None
    assert spares.hits == 1


def test_a_spare_serves_only_its_own_credential_and_parameters(gateway, spares, pg_cluster):
    with _session(gateway):
        pass
    [spare_pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    with _session(gateway, "bob", "superuser") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["superuser"].username
    with _session(gateway, app="another-application") as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != spare_pid
    assert spares.hits == 0
    assert spare_pid in _spare_pids(spares), "the read-only spare still waits for its own route"


def test_a_refused_unlock_never_reaches_the_spare(gateway, spares):
    with _session(gateway):
        pass
    [spare_pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    with pytest.raises(psycopg.OperationalError, match="no lease or grant"):
        _session(gateway, "carl", "read-only")
    assert _spare_pids(spares) == [spare_pid] and spares.hits == 0


def test_no_spare_for_a_login_that_needs_the_password(gateway, spares):
    """md5 needs the password for every login: no spare is even tried for it."""
    with _session(gateway, "bob", "md5") as conn:
        conn.execute("SELECT 1")
    assert not spares._making and not spares._failed and _spare_pids(spares) == []


def test_without_cached_keys_the_spare_is_not_made_and_the_route_backs_off(gateway, spares, pg_cluster):
    with _session(gateway):
        pass
    gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    gateway.listener.ctx.scram_cache._data.clear()  # e.g. evicted, or a new salt on the server
    with _session(gateway) as conn:  # takes the spare; the next spare would need the password
        conn.execute("SELECT 1")
    gateway.wait_for(lambda: spares._failed, what="the next spare's attempt to fail")
    assert _spare_pids(spares) == [] and not spares._making
    with _session(gateway) as conn:  # a normal login with the unlocked secret
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
        conn.execute("SELECT 1")  # answered after the first one's outcome (and spare decision)
    assert not spares._making and _spare_pids(spares) == [], "the route backs off after a failed spare"


def test_the_spare_is_made_after_the_first_statement_is_answered(gateway, spares, monkeypatch):
    monkeypatch.setattr(pg_login, "REPLENISH_FALLBACK", 3600.0)  # only the first answer can trigger it
    with _session(gateway) as conn:
        assert not spares._making and not _spare_pids(spares), "not during the login"
        conn.execute("SELECT 1")
        gateway.wait_for(lambda: _spare_pids(spares), what="a spare after the first answer")


def test_a_rotated_credential_drops_its_old_spare(gateway, spares, pg_cluster):
    with _session(gateway, "bob", "restricted"):
        pass
    [old_pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    password = pg_cluster.logins["restricted"].password
    catalog.rotate_credential(gateway.cp, gateway.state.admin, "pgtest", "restricted",
                              secret=SecretValue(password.encode()))
    with _session(gateway, "bob", "restricted") as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != old_pid
    assert spares.hits == 0
    assert old_pid not in _spare_pids(spares)
    gateway.wait_for(lambda: old_pid not in _idle_backends(pg_cluster, "sdm-spares-test"),
                     what="the stale spare's backend to end")


def test_an_idle_spare_is_closed_after_max_idle(gateway, spares, pg_cluster, monkeypatch):
    monkeypatch.setattr(spares, "_max_idle", 0.3)
    with _session(gateway, app="sdm-spares-idle"):
        pass
    [pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    gateway.wait_for(lambda: not _spare_pids(spares), what="the idle spare to expire")
    gateway.wait_for(lambda: pid not in _idle_backends(pg_cluster, "sdm-spares-idle"),
                     what="the expired spare's backend to end")


def test_closing_the_spares_ends_their_backends(gateway, spares, pg_cluster):
    with _session(gateway, app="sdm-spares-close"):
        pass
    [pid] = gateway.wait_for(lambda: _spare_pids(spares), what="a warm spare")
    assert pid in _idle_backends(pg_cluster, "sdm-spares-close")
    gateway.loop.run(spares.aclose())
    gateway.wait_for(lambda: pid not in _idle_backends(pg_cluster, "sdm-spares-close"),
                     what="the spare's backend to end")
    with _session(gateway, app="sdm-spares-close"):
        pass
    assert len(spares) == 0 and not spares._making, "a closed WarmSpares makes no more"
