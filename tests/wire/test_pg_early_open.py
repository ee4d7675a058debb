"""The early upstream open: while the unlock decides, the listener already reaches the database along
the route the last unlock of that datasource/credential took (the server forks its backend
meanwhile). It must be invisible: same login, same user, nothing opened for strangers, and a stale
route is thrown away."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from sdm_proxy.wire.postgres import session_login as pg_login
from sdm_proxy.wire.postgres.upstream import RouteHint

pytestmark = pytest.mark.postgres


@pytest.fixture
def early_opens(monkeypatch, gateway):
    """Record every early open and what became of it (warm spares off: a spare makes an early
    open pointless, so the listener skips it; test_pg_spares.py covers that)."""
    monkeypatch.setattr(gateway.listener.ctx, "spares", None)
    calls = []
    real = pg_login.open_early

    async def recording(hint, params, timeout):
        call = {"hint": hint, "opened": None}
        calls.append(call)
        call["opened"] = await real(hint, params, timeout)
        return call["opened"]

    monkeypatch.setattr(pg_login, "open_early", recording)
    return calls


def _ctx(gateway):
    return gateway.listener.ctx


def test_second_login_opens_early_and_uses_that_connection(gateway, early_opens, pg_cluster):
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        conn.execute("SELECT 1")
    early_opens.clear()
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
    [call] = early_opens
    assert call["hint"].db_user == pg_cluster.logins["read-only"].username
    reader, writer = call["opened"]
    assert not writer.is_closing(), "the early connection is the session's upstream, still open"


def test_a_token_that_does_not_verify_opens_nothing(gateway, early_opens):
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        conn.execute("SELECT 1")
    early_opens.clear()
    bad = dict(gateway.kwargs("ann", "read-only"), password="sdms.forged.token")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**bad)
    assert early_opens == [], "a stranger's login must not make the gateway reach the database"


def test_a_stale_route_is_closed_and_the_login_goes_the_usual_way(gateway, early_opens, pg_cluster):
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        conn.execute("SELECT 1")
    route = (gateway.kwargs("ann", "read-only")["dbname"], "read-only")
    real_hint = _ctx(gateway).route_hints.get(route)
    stale = RouteHint(real_hint.datasource, pg_cluster.logins["superuser"].username)  # e.g. before a change
    _ctx(gateway).route_hints.remember(route, stale)
    early_opens.clear()
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
    [call] = early_opens
    assert call["hint"] == stale
    gateway.wait_for(lambda: call["opened"] is None or call["opened"][1].is_closing(),
                     what="the stale early connection to be closed")
    assert _ctx(gateway).route_hints.get(route) == real_hint


def test_route_hints_are_bounded():
    from sdm_proxy.unlock.client import DatasourceInfo
    from sdm_proxy.wire.postgres.upstream import RouteHints

    hints = RouteHints(limit=3)
    ds = DatasourceInfo("d", "postgres", "127.0.0.1", 5432, "db", "disable", None)
    for n in range(5):
        hints.remember(("d", f"c{n}"), RouteHint(dataclasses.replace(ds, port=n), "u"))
    assert [hints.get(("d", f"c{n}")) is not None for n in range(5)] == [False, False, True, True, True]
