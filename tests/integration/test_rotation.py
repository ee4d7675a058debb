"""``sdm credential rotate --generate`` against real, password-enforcing servers: the database gets a
new password set by the login itself, the old one stops working, the unlocked secret is the new one,
and nobody (not the admin, not the output, not the audit log) sees it."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from pathlib import Path

import psycopg
import pymysql
import pytest

from sdm_proxy.control.catalog import list_credentials
from sdm_proxy.control.rotation import (
    mysql_native_password_hash,
    rotate_with_generated_password,
    scram_sha256_verifier,
)
from sdm_proxy.control.unlock import unlock
from sdm_proxy.errors import UpstreamError
from sdm_proxy.unlock.message import answer_info
from sdm_proxy.vault.transport import open_from_gateway
from tests.support.gateway_state import GatewayState, signed


def unlocked_secret(st: GatewayState, actor, datasource: str, credential: str) -> str:
    body, request, ephemeral = signed(st.enrolled_proxy(), st.session_token(actor), credential=credential,
                                      datasource=datasource)
    answer = unlock(st.cp, body)
    return open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer)).reveal().decode()


@pytest.mark.postgres
def test_rotate_generate_on_postgres(pg_cluster, tmp_path):
    user, old = f"rot_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    with psycopg.connect(**pg_cluster.connect_kwargs("bootstrap"), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{old}'")
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("pg", port=pg_cluster.port, credentials={"rot": (user, old)})
        st.role_leasing("ops", "pg", "rot")
        ops = st.add_user("ops", roles_=("ops",))
        view = rotate_with_generated_password(st.cp, st.admin, "pg", "rot")
        assert view["version"] == 2
        new = unlocked_secret(st, ops, "pg", "rot")
        assert new != old and new not in json.dumps(view)
        assert all(new not in json.dumps(e) for e in st.events())
        kwargs = dict(host=pg_cluster.host, port=pg_cluster.port, dbname=pg_cluster.database, user=user)
        with psycopg.connect(**kwargs, password=new) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == user
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**kwargs, password=old)
        with psycopg.connect(**pg_cluster.connect_kwargs("bootstrap")) as conn:
            stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).fetchone()[0]
        assert stored.startswith("SCRAM-SHA-256$4096:")  # a verifier went over the wire, not the password
    finally:
        st.close()


@pytest.mark.postgres
def test_rotate_generate_refused_by_the_database_changes_nothing(pg_cluster, tmp_path):
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("pg", port=pg_cluster.port, credentials={"bad": ("nobody_here", "wrong")})
        with pytest.raises(UpstreamError, match="could not set the new password on pg"):
            rotate_with_generated_password(st.cp, st.admin, "pg", "bad")
        assert [c["version"] for c in list_credentials(st.cp, st.admin)] == [1]
        assert not [e for e in st.events() if e["type"] == "admin.credential.rotate"]
    finally:
        st.close()


def _mariadb_login(mysql_server) -> tuple[str, str]:
    user, old = f"rot_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    conn = pymysql.connect(**mysql_server.connect_kwargs("bootstrap"))
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (old,))
        cur.execute(f"GRANT SELECT ON {mysql_server.database}.* TO '{user}'@'%'")
    conn.close()
    return user, old


@contextlib.contextmanager
def _general_log(mysql_server, path):
    """MariaDB's general query log, on for the block (it records every statement as received)."""
    root = pymysql.connect(**mysql_server.connect_kwargs("bootstrap"), autocommit=True)
    try:
        with root.cursor() as cur:
            cur.execute("SET GLOBAL log_output = 'FILE'")
            cur.execute("SET GLOBAL general_log_file = %s", (str(path),))
            cur.execute("SET GLOBAL general_log = 1")
        yield
    finally:
        with root.cursor() as cur:
            cur.execute("SET GLOBAL general_log = 0")
        root.close()


@pytest.mark.mysql
def test_rotate_generate_on_mariadb_over_its_unix_socket(mysql_server, tmp_path):
    user, old = _mariadb_login(mysql_server)
    st = GatewayState.create(tmp_path / "home")
    log = Path(mysql_server.socket_dir) / f"general-{secrets.token_hex(4)}.log"  # where mysqld may write
    try:
        host = str(mysql_server.socket_path)
        st.add_datasource("my", type="mysql", host=host, port=mysql_server.port, credentials={"rot": (user, old)})
        st.role_leasing("ops", "my", "rot")
        ops = st.add_user("ops", roles_=("ops",))
        with _general_log(mysql_server, log):
            rotate_with_generated_password(st.cp, st.admin, "my", "rot")
        new = unlocked_secret(st, ops, "my", "rot")
        kwargs = dict(host=mysql_server.host, port=mysql_server.port, user=user, database=mysql_server.database)
        pymysql.connect(**kwargs, password=new).close()
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(**kwargs, password=old)
        # Review: MariaDB logged `SET PASSWORD = PASSWORD('<the new password>')` as sent.
        text = log.read_text(errors="replace")
        assert "SET PASSWORD" in text  # the log did record the statement...
        assert new not in text  # ...with the hash, never the password
        assert mysql_native_password_hash(new.encode()) in text
    finally:
        st.close()


@pytest.mark.mysql
def test_rotate_generate_under_strict_password_validation_says_what_to_do(mysql_server, tmp_path):
    """Review: with a password validation plugin, MariaDB refuses a pre-hashed password (1290)."""
    user, old = _mariadb_login(mysql_server)
    root = pymysql.connect(**mysql_server.connect_kwargs("bootstrap"), autocommit=True)
    try:
        with root.cursor() as cur:
            cur.execute("INSTALL SONAME 'simple_password_check'")
        st = GatewayState.create(tmp_path / "home")
        try:
            st.add_datasource("my", type="mysql", host=str(mysql_server.socket_path), port=mysql_server.port,
                              credentials={"rot": (user, old)})
            with pytest.raises(UpstreamError, match="strict_password_validation.*--password-stdin"):
                rotate_with_generated_password(st.cp, st.admin, "my", "rot")
            assert [c["version"] for c in list_credentials(st.cp, st.admin)] == [1]
        finally:
            st.close()
    finally:
        with root.cursor() as cur:
            cur.execute("UNINSTALL SONAME 'simple_password_check'")
        root.close()


@pytest.mark.mysql
def test_rotate_generate_on_mariadb_refuses_an_account_it_cannot_set_without_logging(mysql_server, tmp_path):
    """An ed25519 (or any non-native) account: MariaDB would log the password; nothing is changed."""
    user, old = _mariadb_login(mysql_server)
    root = pymysql.connect(**mysql_server.connect_kwargs("bootstrap"), autocommit=True)
    with root.cursor() as cur:  # the same password, another method the gateway cannot pre-hash
        cur.execute(f"ALTER USER '{user}'@'%%' IDENTIFIED VIA mysql_native_password USING PASSWORD(%s) "
                    "OR unix_socket", (old,))
    root.close()
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("my", type="mysql", host=str(mysql_server.socket_path), port=mysql_server.port,
                          credentials={"rot": (user, old)})
        with pytest.raises(UpstreamError, match="does not log in with mysql_native_password"):
            rotate_with_generated_password(st.cp, st.admin, "my", "rot")
        assert [c["version"] for c in list_credentials(st.cp, st.admin)] == [1]
        pymysql.connect(host=mysql_server.host, port=mysql_server.port, user=user, password=old,
                        database=mysql_server.database).close()  # the old password still works
    finally:
        st.close()


@pytest.mark.mysql
def test_rotate_generate_on_mysql_to_an_unverified_server_is_refused_before_connecting(mysql_server, tmp_path):
    """MySQL takes the new password from the SQL text, and PyMySQL's login sends the current one in
    clear to a server that asks, or encrypts it to any RSA key a server in the middle offers: to a
    server that is not verified (plain TCP, or `require` TLS: review) nothing is attempted."""
    user, old = _mariadb_login(mysql_server)
    listener = socket.create_server(("127.0.0.1", 0))  # stands where the server would be: counts connections
    listener.settimeout(0.5)
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("my", type="mysql", host="127.0.0.1", port=mysql_server.port,
                          credentials={"rot": (user, old)})
        st.add_datasource("trap", type="mysql", host="127.0.0.1", port=listener.getsockname()[1],
                          credentials={"rot": (user, old)})
        st.add_datasource("trap-tls", type="mysql", host="127.0.0.1", port=listener.getsockname()[1],
                          credentials={"rot": (user, old)}, tls="require")
        for datasource in ("my", "trap", "trap-tls"):
            with pytest.raises(UpstreamError, match="the server is not verified"):
                rotate_with_generated_password(st.cp, st.admin, datasource, "rot")
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected: not even the login was tried
        assert [c["version"] for c in list_credentials(st.cp, st.admin)] == [1, 1, 1]
        assert not [e for e in st.events() if e["type"] == "admin.credential.rotate"]
        pymysql.connect(host=mysql_server.host, port=mysql_server.port, user=user, password=old,
                        database=mysql_server.database).close()  # the old password still works
    finally:
        listener.close()
        st.close()


@pytest.mark.postgres
def test_rotate_generate_on_postgres_with_a_libpq_that_cannot_refuse_clear_text(pg_cluster, tmp_path, monkeypatch):
    """Before libpq 16 `require_auth` does not exist: over plain TCP the rotation then refuses
    before connecting (a server asking for the password in clear would get it)."""
    login = pg_cluster.logins["superuser"]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    monkeypatch.setattr(psycopg.pq, "version", lambda: 150004)
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("trap", port=listener.getsockname()[1], credentials={"su": (login.username, login.password)})
        with pytest.raises(UpstreamError, match="cannot refuse a server that asks for the password in clear text"):
            rotate_with_generated_password(st.cp, st.admin, "trap", "su")
        with pytest.raises(TimeoutError):
            listener.accept()
        assert [c["version"] for c in list_credentials(st.cp, st.admin)] == [1]
    finally:
        listener.close()
        st.close()


def test_scram_verifier_matches_postgres_format():
    v = scram_sha256_verifier(b"pencil", salt=b"0123456789abcdef", iterations=4096)
    head, keys = v.split("$", 1)[1].split("$")
    assert v.startswith("SCRAM-SHA-256$4096:") and head == "4096:MDEyMzQ1Njc4OWFiY2RlZg=="
    assert len(keys.split(":")) == 2
