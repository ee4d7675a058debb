"""Logging in through the gateway: the leased DB login, every refusal with its SQLSTATE, TLS."""

from __future__ import annotations

import struct
import time
from datetime import timedelta

import psycopg
import pytest
from sdm_proxy import errors as sdm_errors
from sdm_proxy.control import catalog, roles, sessions
from sdm_proxy.control.unlock import unlock
from sdm_proxy.gateway import enrol_local_proxy
from sdm_proxy.unlock.client import InProcessUnlockClient
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire.postgres import gateway_tls_context, start_postgres_listener

from tests.support.accounts import free_port
from tests.wire import pgraw
from tests.wire.stack import CANCEL_SCRIPT, DATASOURCE, make_policy_check

pytestmark = pytest.mark.postgres


def _assert_no_secret(gateway, text: str) -> None:
    for login in gateway.pg.logins.values():
        assert login.password not in text
    for token in gateway.tokens.values():
        assert token not in text


# ---- the happy paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("user,credential", [("ann", "read-only"), ("bob", "superuser"),
                                             ("bob", "restricted"), ("bob", "md5")])
def test_current_user_is_the_leased_db_login(gateway, user, credential):
    """SCRAM upstream for most logins, md5 for the md5 one: both log in as the credential's user."""
    with psycopg.connect(**gateway.kwargs(user, credential)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == gateway.pg.logins[credential].username


def test_pg_stat_activity_shows_the_login_connected_from_the_gateway(gateway, pg_cluster):
    app = "sdm-wire-activity-test"
    with psycopg.connect(**gateway.kwargs("ann", "read-only", application_name=app)) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(**pg_cluster.connect_kwargs("superuser")) as direct:
            rows = direct.execute(
                "SELECT usename, host(client_addr) FROM pg_stat_activity WHERE application_name = %s "
                "AND pid = %s", (app, backend)).fetchall()
    # (a warm spare for the next session may sit beside it with the same name: test_pg_spares.py)
    assert rows == [(gateway.pg.logins["read-only"].username, "127.0.0.1")]


def test_user_naming_no_credential_picks_the_callers_only_lease(gateway):
    with psycopg.connect(**gateway.kwargs("ann", "jupyter")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == gateway.pg.logins["read-only"].username


def test_backend_key_is_the_gateways_own(gateway):
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        real_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.info.backend_pid != real_pid


def test_ssl_request_is_declined_without_a_tls_context(gateway):
    with psycopg.connect(**gateway.kwargs("ann", sslmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(**gateway.kwargs("ann", sslmode="require"))


def test_gssenc_request_is_declined_and_the_login_goes_on(gateway):
    sock = pgraw.connect(gateway.host, gateway.port)
    sock.sendall(struct.pack("!ii", 8, 80877104))
    assert pgraw.recv_exact(sock, 1) == b"N"
    sock.sendall(pgraw.startup_packet({"user": "read-only", "database": DATASOURCE}))
    t, payload = pgraw.read_message(sock)
    assert t == b"R" and struct.unpack("!i", payload)[0] == 3  # cleartext password, please
    sock.sendall(pgraw.message(b"p", gateway.tokens["ann"].encode() + b"\0"))
    msgs = pgraw.read_until_end(sock)
    assert msgs[-1] == (b"Z", b"I")
    sock.close()


def test_session_start_and_end_are_audited(gateway):
    with psycopg.connect(**gateway.kwargs("bob", "restricted", application_name="audit-start-end")) as conn:
        conn.execute("SELECT 1")
    starts = [e for e in gateway.events("session.start") if e["credential"] == "restricted" and e["protocol"] == "postgres"]
    assert starts and starts[-1]["user"] == "bob" and starts[-1]["db_user"] == gateway.pg.logins["restricted"].username
    ends = gateway.wait_for(lambda: [e for e in gateway.events("session.end")
                                     if e["session_id"] == starts[-1]["session_id"] and e["credential"] == "restricted"],
                            what="session.end")
    assert ends[-1]["status"] == "ok"


# ---- refusals --------------------------------------------------------------------------------------


def test_wrong_token_is_28P01(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE,
                               password="sdms.not-a-token.at-all")
    assert fields["S"] == "FATAL" and fields["C"] == "28P01"
    assert "password authentication failed" in fields["M"]


def test_empty_password_is_28P01(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE, password="")
    assert fields["C"] == "28P01"


def test_expired_token_is_28P01(gateway):
    token = gateway.new_token("ann", ttl=timedelta(seconds=1))["token"]
    time.sleep(1.5)
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE, password=token)
    assert fields["C"] == "28P01" and "expired" in fields["M"]


def test_revoked_token_is_28P01(gateway):
    session = gateway.new_token("ann")
    sessions.revoke_session(gateway.cp, gateway.state.admin, session["id"])
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE,
                               password=session["token"])
    assert fields["C"] == "28P01" and "revoked" in fields["M"]
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        psycopg.connect(**gateway.kwargs("ann", token=session["token"]))


def test_no_lease_is_28000_naming_what_is_missing(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="superuser", database=DATASOURCE,
                               password=gateway.tokens["ann"])
    assert fields["C"] == "28000"
    assert "ann" in fields["M"] and f"{DATASOURCE}/superuser" in fields["M"]
    fields = pgraw.login_error(gateway.host, gateway.port, user="anything", database=DATASOURCE,
                               password=gateway.tokens["carl"])
    assert fields["C"] == "28000" and "carl" in fields["M"] and DATASOURCE in fields["M"]
    denied = [e for e in gateway.events("access.denied") if e["user"] == "carl"]
    assert denied, "the refusal is an access.denied event"


def test_ambiguous_credential_lists_the_choices(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="postgres", database=DATASOURCE,
                               password=gateway.tokens["bob"])
    assert fields["C"] == "28000"
    for choice in ("superuser", "restricted", "md5"):
        assert choice in fields["M"]


def test_unknown_datasource_is_28000(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="no-such-db",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "28000" and "no-such-db" in fields["M"]


def test_missing_dbname_or_user_is_28000(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="", password="x")
    assert fields["C"] == "28000" and "datasource" in fields["M"]


def test_replication_connections_are_refused(gateway):
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE,
                               password=gateway.tokens["ann"], extra={"replication": "database"})
    assert fields["C"] == "0A000"


def _add_datasource_for_ann(gateway, name: str, port: int, password: str, username: str = "sdm_readonly"):
    st = gateway.state
    catalog.add_datasource(st.cp, st.admin, name, type="postgres", host="127.0.0.1", port=port,
                           database="sdm_test")
    catalog.add_credential(st.cp, st.admin, name, "read-only", username=username,
                           secret=SecretValue(password.encode()))
    roles.create_role(st.cp, st.admin, f"{name}-users")
    roles.lease(st.cp, st.admin, f"{name}-users", name, "read-only")
    roles.assign_role(st.cp, st.admin, f"{name}-users", "ann")


def test_unreachable_upstream_is_08006_with_reason_and_no_secret(gateway):
    secret = "dead-upstream-secret-Zq9"
    _add_datasource_for_ann(gateway, "pgdead", free_port(), secret)
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="pgdead",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and "cannot reach datasource pgdead" in fields["M"]
    assert secret not in str(fields)
    _assert_no_secret(gateway, str(fields))
    ends = gateway.wait_for(lambda: [e for e in gateway.events("session.end") if e["datasource"] == "pgdead"],
                            what="session.end for the failed upstream")
    assert ends[-1]["status"] == "error" and "cannot reach" in ends[-1]["error"]


def test_upstream_refusing_the_login_is_08006_without_the_secret(gateway):
    secret = "wrong-upstream-secret-Kp3"
    _add_datasource_for_ann(gateway, "pgwrongpw", gateway.pg.port, secret)
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="pgwrongpw",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and "refused the login" in fields["M"] and "28P01" in fields["M"]
    assert secret not in str(fields)


def test_a_refused_login_leaves_the_gateway_serving(gateway):
    for _ in range(3):
        pgraw.login_error(gateway.host, gateway.port, user="read-only", database=DATASOURCE, password="nope")
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- TLS on the front -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_gateway(gateway):
    """A second listener on the same stack with the gateway certificate from `sdm init`."""
    ctx = gateway_tls_context(gateway.state.home.tls_dir)
    identity = enrol_local_proxy(gateway.cp)
    client = InProcessUnlockClient(identity, lambda body: unlock(gateway.cp, body))

    async def start(host):
        return await start_postgres_listener(host, 0, unlock_client=client, audit_log=gateway.cp.audit,
                                             tls_context=ctx, policy_check=make_policy_check(gateway.cp))

    loopback = gateway.loop.run(start("127.0.0.1"))
    wildcard = gateway.loop.run(start("0.0.0.0"))
    yield loopback, wildcard
    gateway.loop.run(loopback.close())
    gateway.loop.run(wildcard.close())


def test_tls_front_with_the_gateway_certificate(gateway, tls_gateway):
    loopback, _ = tls_gateway
    ca = str(gateway.state.home.tls_dir / "ca.pem")
    kw = gateway.kwargs("ann", host="localhost", port=loopback.port, sslmode="verify-full", sslrootcert=ca)
    with psycopg.connect(**kw) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone()[0] == gateway.pg.logins["read-only"].username


def test_non_loopback_listener_requires_tls(gateway, tls_gateway):
    _, wildcard = tls_gateway
    fields = pgraw.login_error("127.0.0.1", wildcard.port, user="read-only", database=DATASOURCE,
                               password=gateway.tokens["ann"])
    assert fields["C"] == "28000" and "requires TLS" in fields["M"]
    kw = gateway.kwargs("ann", port=wildcard.port, sslmode="require")
    with psycopg.connect(**kw) as conn:
        assert conn.pgconn.ssl_in_use and conn.execute("SELECT 1").fetchone() == (1,)


def test_refuses_to_listen_beyond_loopback_without_tls(gateway):
    async def start():
        return await start_postgres_listener("0.0.0.0", 0, unlock_client=None, audit_log=gateway.cp.audit)

    with pytest.raises(sdm_errors.UsageError, match="without TLS"):
        gateway.loop.run(start())


def test_plaintext_after_ssl_request_is_refused(gateway, tls_gateway):
    """CVE-2021-23214: bytes sent in clear right after SSLRequest must not be read as encrypted."""
    loopback, _ = tls_gateway
    sock = pgraw.connect("127.0.0.1", loopback.port)
    sock.sendall(struct.pack("!ii", 8, 80877103) + pgraw.startup_packet({"user": "x", "database": "y"}))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    assert msgs and msgs[-1][0] == b"E" and pgraw.error_fields(msgs[-1][1])["C"] == "08P01"


def test_cancel_request_over_tls_reaches_the_backend(gateway, tls_gateway):
    """libpq's new cancel API repeats the TLS negotiation before the CancelRequest."""
    import json
    import subprocess
    import sys

    loopback, _ = tls_gateway
    kw = gateway.kwargs("ann", port=loopback.port, sslmode="require")
    out = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT, json.dumps(kw), "cancel_safe"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "cancelled" and result["elapsed"] < 2.0
