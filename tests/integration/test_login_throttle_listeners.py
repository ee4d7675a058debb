"""`sdm gateway --login-failure-limit`: real listeners on this machine's non-loopback address, real
clients with bad session tokens. After the limit, bad logins from that address are refused with the
protocol's own error, without an access.denied event each, while a valid token still gets in; the
audit log holds one event when the throttle starts and one with the count when it ends."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pymysql
import pytest

from tests.support.api_server import free_port
from tests.support.cli import ok, reader_home, start_gateway
from tests.support.net import non_loopback_address

ADDRESS = non_loopback_address()
LIMIT = 3


def _home(tmp_path, db_type: str, server) -> tuple:
    if ADDRESS is None:
        pytest.skip("this machine has no non-loopback IPv4 address to put a listener on")
    home = tmp_path / "home"
    return home, reader_home(home, "db", db_type, server, "--tls-name", ADDRESS)


def _stop(proc) -> None:
    proc.terminate()  # SIGTERM: the listeners close, and each throttle's count goes on record
    proc.communicate(timeout=60)
    assert proc.returncode == 0


def _denials(home) -> list[dict]:
    events = ok(home, "audit", "tail", "--json", "-n", "1000").json_lines()
    return [e for e in events if e["type"] == "access.denied"]


def _check_the_log(home, protocol: str) -> None:
    denials = [e for e in _denials(home) if e["protocol"] in (protocol, None)]
    throttle = [e for e in denials if (e.get("details") or {}).get("throttle")]
    one_each = [e for e in denials if e not in throttle]
    assert len(one_each) == LIMIT, one_each  # the failures before the throttle, one event each
    assert [e["details"]["throttle"] for e in throttle] == ["start", "end"], throttle
    assert {e["client"]["addr"] for e in throttle} == {ADDRESS}
    assert throttle[0]["details"]["failures"] == LIMIT
    assert throttle[1]["details"]["refused"] == 2
    assert ok(home, "audit", "verify").rc == 0


@pytest.fixture
def pg_gateway(pg_cluster, tmp_path):
    """A home with datasource `db` (PostgreSQL), `sdm gateway` on ADDRESS with the small limit, and
    ann's psycopg settings from `sdm connect` (TLS, verified)."""
    home, key = _home(tmp_path, "postgres", pg_cluster)
    proc = start_gateway(home, "--api", f"127.0.0.1:{free_port()}", "--postgres", f"{ADDRESS}:{free_port()}",
                         "--mysql", "off", "--login-failure-limit", str(LIMIT))
    try:
        settings = ok(home, "connect", "db", "--format", "json", api_key=key).json()
        good = {k: settings[k] for k in ("host", "port", "user", "password", "sslmode", "sslrootcert")}
        good["dbname"] = settings["database"]
        yield SimpleNamespace(home=home, key=key, good=good, proc=proc)
    finally:
        if proc.poll() is None:
            _stop(proc)


@pytest.mark.postgres
def test_postgres_throttles_bad_tokens_but_not_a_valid_one(pg_gateway, pg_cluster):
    good = pg_gateway.good
    bad = {**good, "password": good["password"][:-4] + "AAAA"}  # a forged signature
    for _ in range(LIMIT):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**bad, connect_timeout=10)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match=f"FATAL:  too many failed logins from {ADDRESS}:"):
            psycopg.connect(**bad, connect_timeout=10)
    with psycopg.connect(**good, connect_timeout=10) as conn:  # a valid token is not throttled
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
    _stop(pg_gateway.proc)
    _check_the_log(pg_gateway.home, "postgres")


@pytest.mark.postgres
def test_a_revoked_session_token_gets_no_pass_through_the_throttle(pg_gateway):
    """Its signature and expiry still check out locally, but once an unlock has refused it, it is
    throttled like a forged one (and opens no early database connection)."""
    home, key, good = pg_gateway.home, pg_gateway.key, pg_gateway.good
    session = ok(home, "session", "create", "--json", api_key=key).json()
    ok(home, "session", "revoke", session["id"])
    revoked = {**good, "password": session["token"]}
    for _ in range(LIMIT):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**revoked, connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match=f"too many failed logins from {ADDRESS}:"):
        psycopg.connect(**revoked, connect_timeout=10)
    with psycopg.connect(**good, connect_timeout=10) as conn:  # a live session's token still gets in
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.mysql
def test_mysql_throttles_bad_tokens_with_error_1129(mysql_server, tmp_path):
    home, key = _home(tmp_path, "mysql", mysql_server)
    port = free_port()
    proc = start_gateway(home, "--api", f"127.0.0.1:{free_port()}", "--postgres", "off",
                         "--mysql", f"{ADDRESS}:{port}", "--login-failure-limit", str(LIMIT))
    try:
        s = ok(home, "connect", "db", "--format", "json", api_key=key).json()

        def connect(password: str) -> pymysql.Connection:
            return pymysql.connect(host=s["host"], port=s["port"], user=s["user"], password=password,
                                   database=s["database"], connect_timeout=10, ssl_ca=s["ssl_ca"],
                                   ssl_verify_cert=True, ssl_verify_identity=True)

        bad = s["password"][:-4] + "AAAA"
        for _ in range(LIMIT):
            with pytest.raises(pymysql.err.OperationalError) as failed:
                connect(bad)
            assert failed.value.args[0] == 1045, failed.value
        for _ in range(2):
            with pytest.raises(pymysql.err.OperationalError) as refused:
                connect(bad)
            assert refused.value.args[0] == 1129 and "too many failed logins" in refused.value.args[1]
        with connect(s["password"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(mysql_server.logins["read-only"].username + "@")
    finally:
        _stop(proc)
    _check_the_log(home, "mysql")
