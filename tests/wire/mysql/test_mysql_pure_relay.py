"""Real clients (PyMySQL, the mariadb CLI) through a relay made of the pure layers only, to real MariaDB.

See ``mysql_pure_relay.py``: it stands in for the asyncio glue, so these tests check that the
front state machine, the upstream login, the classifier and the scanner fit together with what
real client libraries send and expect.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pymysql
import pytest

from tests.wire.mysql.mysql_pure_relay import DATASOURCE, PureRelay

pytestmark = pytest.mark.mysql

ANN_TOKEN = "sdm_tok_ann_" + "a" * 40
BOB_TOKEN = "sdm_tok_bob_" + "b" * 40


@pytest.fixture(scope="module")
def relay(mysql_server):
    r = PureRelay(mysql_server, {ANN_TOKEN: "ann", BOB_TOKEN: "bob"})
    yield r
    r.close()


@pytest.fixture(scope="module")
def tls_relay(mysql_server, tmp_path_factory):
    import ssl

    from sdm_proxy.tls import create_gateway_tls

    tls_dir = tmp_path_factory.mktemp("mysql-tls")
    create_gateway_tls(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir / "gateway.pem", tls_dir / "gateway-key.pem")
    r = PureRelay(mysql_server, {ANN_TOKEN: "ann"}, tls=ctx, tls_required=True)
    r.ca = str(tls_dir / "ca.pem")
    yield r
    r.close()


def _wait_record(relay, predicate):
    """The relay thread records a statement just after forwarding its last packet: wait for it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in relay.records if predicate(r)]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError("no such record")


def _connect(relay, *, user="read-only", token=ANN_TOKEN, database=DATASOURCE, **kw):
    return pymysql.connect(host="127.0.0.1", port=relay.port, user=user, password=token, database=database,
                           connect_timeout=10, **kw)


def test_pymysql_query_runs_as_leased_login(relay, mysql_server):
    with _connect(relay) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER() /*sdm_cell='c%2D1',sdm_notebook='nb.ipynb'*/")
        assert cur.fetchone()[0] == "sdm_readonly@%"
        cur.execute("SELECT id, country FROM customers WHERE id <= %s ORDER BY id", (5,))
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3, 4, 5]
    rec = _wait_record(relay, lambda r: "CURRENT_USER" in r.text)
    assert rec.user == "ann" and rec.rows == 1 and rec.tags.get("cell_id") == "c-1"


def test_processlist_shows_leased_login_from_gateway(relay, mysql_server):
    with _connect(relay, user="superuser") as conn, conn.cursor() as cur:
        cur.execute("SELECT USER, HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        user, host = cur.fetchone()
        assert user == "sdm_super" and host.startswith("127.0.0.1")
        # The client sees the gateway's id, not the upstream thread id.
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] != conn.thread_id()


def test_read_only_insert_fails_and_connection_stays_usable(relay):
    with _connect(relay) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute("INSERT INTO customers (name, email, country) VALUES ('x', 'x@x', 'DE')")
        assert info.value.args[0] == 1142
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone()[0] == 600


def test_wrong_token_no_lease_unknown_datasource(relay):
    with pytest.raises(pymysql.err.OperationalError) as info:
        _connect(relay, token="nope")
    assert info.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as info:
        _connect(relay, user="nosuch")
    assert info.value.args[0] == 1045 and "nosuch" in info.value.args[1]
    with pytest.raises(pymysql.err.OperationalError) as info:
        _connect(relay, database="elsewhere")
    assert info.value.args[0] == 1045
    assert ANN_TOKEN not in str(relay.errors)


def test_many_rows_and_sqlalchemy_style_flags(relay):
    from pymysql.constants import CLIENT

    with _connect(relay, client_flag=CLIENT.FOUND_ROWS) as conn, conn.cursor() as cur:
        cur.execute("SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id")
        assert len(cur.fetchall()) == 600
    assert _wait_record(relay, lambda r: r.text.startswith("SELECT o.id")).rows == 600


def test_init_db_ping_and_reset_connection(relay):
    with _connect(relay) as conn, conn.cursor() as cur:
        conn.select_db("sdm_test")  # COM_INIT_DB goes to the upstream as-is
        conn.ping()
        cur.execute("SET @sdm_v = 7")
        conn._execute_command(0x1F, b"")  # COM_RESET_CONNECTION: PyMySQL has no API for it
        conn._read_ok_packet()
        cur.execute("SELECT @sdm_v")
        assert cur.fetchone()[0] is None  # the upstream session was reset
    _wait_record(relay, lambda r: r.kind == "COM_RESET_CONNECTION")


def test_kill_query_maps_gateway_ids_and_refuses_other_users(relay):
    victim = _connect(relay)
    killer = _connect(relay)
    stranger = _connect(relay, token=BOB_TOKEN)
    result = {}

    def run():
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(30)")
                result["value"] = cur.fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded
            result["error"] = exc

    try:
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.5)
        with stranger.cursor() as cur:
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute(f"KILL QUERY {victim.thread_id()}")
            assert info.value.args[0] == 1095
        started = time.monotonic()
        with killer.cursor() as cur:
            cur.execute(f"/* cancel */ KILL QUERY {victim.thread_id()}")
        t.join(10)
        assert time.monotonic() - started < 2
        # SLEEP() interrupted returns 1 (MariaDB) or the statement fails with 1317.
        assert result.get("value") == 1 or getattr(result.get("error"), "args", [None])[0] == 1317
        with killer.cursor() as cur:
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute("KILL QUERY @x")
            assert info.value.args[0] == 1235
            cur.execute("SELECT 1")
    finally:
        for c in (victim, killer, stranger):
            c.close()


def test_prepared_statements_through_relay(relay):
    """PyMySQL has no server-side prepare: drive COM_STMT_* by hand over its authenticated connection."""
    import struct

    with _connect(relay) as conn:
        conn._execute_command(0x16, "SELECT id FROM orders WHERE id <= ? /*sdm_cell='p1'*/")
        ok = conn._read_packet().get_all_data()
        stmt_id, ncols, nparams = struct.unpack_from("<IHH", ok, 1)
        assert (ncols, nparams) == (1, 1)
        for _ in range(nparams + 1 + ncols + 1):  # definitions and their EOFs (PyMySQL: no DEPRECATE_EOF)
            conn._read_packet()
        conn._execute_command(0x17, struct.pack("<IBI", stmt_id, 0, 1) + b"\x00\x01\x08\x00" + struct.pack("<q", 3))
        conn._read_packet()  # column count
        for _ in range(ncols + 1):
            conn._read_packet()
        rows = 0
        while not conn._read_packet().is_eof_packet():
            rows += 1
        assert rows == 3
    rec = _wait_record(relay, lambda r: r.kind == "COM_STMT_EXECUTE")
    assert rec.text.startswith("SELECT id FROM orders WHERE id <= ?") and rec.rows == 3


def test_unknown_command_is_err_and_connection_survives(relay):
    with _connect(relay) as conn, conn.cursor() as cur:
        conn._execute_command(0x12, b"")  # COM_BINLOG_DUMP
        with pytest.raises(pymysql.err.OperationalError) as info:
            conn._read_ok_packet()
        assert info.value.args[0] == 1047
        cur.execute("SELECT 2")
        assert cur.fetchone()[0] == 2


def test_tls_listener(tls_relay):
    with pytest.raises(pymysql.err.OperationalError) as info:
        _connect(tls_relay, ssl_disabled=True)
    assert info.value.args[0] == 3159
    for _ in range(5):  # PyMySQL pipelines its ClientHello behind the SSLRequest; some runs coalesce them
        with _connect(tls_relay, ssl_ca=tls_relay.ca, ssl_verify_identity=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), REPEAT('t', 100000)")
            user, big = cur.fetchone()
            assert user == "sdm_readonly@%" and len(big) == 100000
    assert [type(e).__name__ for e in tls_relay.errors] == ["InsecureTransport"]  # only the refused one


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="no mariadb CLI")
def test_mariadb_cli_over_tls(tls_relay):
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(tls_relay.port), "-u", "read-only",
         f"-p{ANN_TOKEN}", "--protocol=TCP", f"--ssl-ca={tls_relay.ca}", "--ssl-verify-server-cert", "--batch",
         "--skip-column-names", DATASOURCE, "-e", "SELECT CURRENT_USER()"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sdm_readonly@%"]


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="no mariadb CLI")
def test_mariadb_cli(relay):
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(relay.port), "-u", "read-only",
         f"-p{ANN_TOKEN}", "--protocol=TCP", "--skip-ssl", "--batch", "--skip-column-names", DATASOURCE,
         "-e", "SELECT CURRENT_USER(); SELECT COUNT(*) FROM orders; SHOW TABLES"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:2] == ["sdm_readonly@%", "600"] and "customers" in lines
