"""Real clients through the asyncio MySQL listener to a real, password-enforcing MariaDB.

PyMySQL, SQLAlchemy 2 (``mysql+pymysql``), ``pandas.read_sql`` and the ``mariadb`` command-line client;
the processlist scenario from the issue; TLS on the front leg.
"""

from __future__ import annotations

import shutil
import ssl
import struct
import subprocess

import pymysql
import pytest
from sdm_proxy.errors import UsageError
from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
from sdm_proxy.wire.mysql import start_mysql_listener

from tests.wire.mysql.mysql_stack import DATASOURCE

pytestmark = pytest.mark.mysql


def test_pymysql_runs_as_the_leased_login(mysql_gateway):
    with mysql_gateway.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == ("sdm_readonly@%", mysql_gateway.db.database)
        cur.execute("SELECT id, country FROM customers WHERE id <= %s ORDER BY id", (5,))
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3, 4, 5]
        cur.execute("SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id")
        assert len(cur.fetchall()) == 600


def test_credential_picked_when_user_names_none(mysql_gateway):
    """ann holds one lease on the datasource: any user name that is no credential picks it."""
    with mysql_gateway.connect("ann", "ann") as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == "sdm_readonly@%"
    with pytest.raises(pymysql.err.OperationalError) as info:
        mysql_gateway.connect("bob", "bob")  # two leases: ambiguous, the error lists them
    assert info.value.args[0] == 1045 and "superuser" in info.value.args[1] and "restricted" in info.value.args[1]


def test_processlist_shows_the_leased_login_from_the_gateway_and_audit_shows_the_analyst(mysql_gateway):
    """The issue's scenario: the DB sees sdm_super from the gateway's address, the audit log sees bob."""
    marker = "processlist-scenario-7f3a"
    with mysql_gateway.connect("bob", "superuser", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW PROCESSLIST /* {marker} */")
        rows = cur.fetchall()
        cur.execute("SELECT CONNECTION_ID()")
        upstream_id = cur.fetchone()[0]
        gateway_id = conn.thread_id()
    mine = [r for r in rows if r[0] == upstream_id]
    assert len(mine) == 1
    _id, user, host, db, *_ = mine[0]
    assert user == mysql_gateway.db.logins["superuser"].username
    assert host.rsplit(":", 1)[0] == "127.0.0.1" and db == mysql_gateway.db.database
    assert gateway_id != upstream_id  # the client knows the gateway's id, not the upstream thread
    [event] = mysql_gateway.query_events(marker)
    assert event["user"] == "bob" and event["credential"] == "superuser"
    assert event["db_user"] == mysql_gateway.db.logins["superuser"].username
    assert event["protocol"] == "mysql" and event["datasource"] == DATASOURCE
    assert mysql_gateway.outcome(event)["rows"] == len(rows)
    start = [e for e in mysql_gateway.events("session.start")
             if e["protocol"] == "mysql" and (e.get("details") or {}).get("connection_id") == gateway_id]
    assert start and start[0]["user"] == "bob"


def test_read_only_insert_fails_with_the_database_error_and_the_connection_stays_usable(mysql_gateway):
    with mysql_gateway.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute("INSERT INTO customers (name, email, country) VALUES ('x', 'x@example.org', 'DE')")
        assert info.value.args[0] == 1142 and "INSERT command denied" in info.value.args[1]
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone()[0] == 600
    [event] = mysql_gateway.query_events("INSERT INTO customers (name, email, country) VALUES ('x'")
    end = mysql_gateway.outcome(event)
    assert end["status"] == "error" and end["error"].startswith("(1142)")


def test_sqlalchemy_engine(mysql_gateway):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(mysql_gateway.url("bob", "superuser"), pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS sa_check (id INT PRIMARY KEY, v VARCHAR(20))")
            conn.exec_driver_sql("DELETE FROM sa_check")
            conn.execute(sqlalchemy.text("INSERT INTO sa_check VALUES (:i, :v)"),
                         [{"i": i, "v": f"v{i}"} for i in range(10)])
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM sa_check")).scalar() == 10
            assert conn.execute(sqlalchemy.text("SELECT v FROM sa_check WHERE id = :i"), {"i": 3}).scalar() == "v3"
            conn.rollback()
            # Rolled back through the gateway: nothing stays.
            with conn.begin() as trans:
                conn.execute(sqlalchemy.text("DELETE FROM sa_check"))
                trans.rollback()
            assert conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM sa_check")).scalar() == 10
            assert sqlalchemy.inspect(conn).has_table("orders")
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE sa_check")
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore:pandas only supports SQLAlchemy")
def test_pandas_read_sql(mysql_gateway):
    pd = pytest.importorskip("pandas")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(mysql_gateway.url())
    try:
        sql = "SELECT id, customer_id, amount, created_at FROM orders ORDER BY id /*sdm_cell='cell-pd',sdm_notebook='nb.ipynb'*/"
        df = pd.read_sql(sql, engine)
        assert len(df) == 600 and list(df.columns) == ["id", "customer_id", "amount", "created_at"]
        assert df["id"].tolist()[:3] == [1, 2, 3]
        with pymysql.connect(**mysql_gateway.kwargs()) as raw:  # a DBAPI connection works too
            small = pd.read_sql("SELECT country, COUNT(*) AS n FROM customers GROUP BY country", raw)
        assert small["n"].sum() == 200
    finally:
        engine.dispose()
    [event] = [e for e in mysql_gateway.query_events("cell-pd") if e["query"].startswith("SELECT id, customer_id")]
    assert event["client"]["cell_id"] == "cell-pd" and event["client"]["notebook"] == "nb.ipynb"
    assert mysql_gateway.outcome(event)["rows"] == 600


def test_big_values_and_many_rows_stream_through(mysql_gateway):
    """Rows larger than one 16 MiB frame, and a result much larger than any buffer."""
    with mysql_gateway.direct() as direct, direct.cursor() as cur:
        cur.execute("SET GLOBAL max_allowed_packet = 67108864")  # for connections opened from now on
    with mysql_gateway.connect("bob", "superuser", max_allowed_packet=64 << 20) as conn, conn.cursor() as cur:
        cur.execute("SELECT REPEAT('x', 17000000), 'tail'")
        big, tail = cur.fetchone()
        assert len(big) == 17_000_000 and tail == "tail"
        cur.execute("SELECT seq, REPEAT('r', 200) FROM seq_1_to_50000")
        assert len(cur.fetchall()) == 50_000
        # A value this big inlined into the statement text (PyMySQL fills parameters in on the
        # client side) is refused: the audit keeps 1 MiB of statement text, and nothing may run
        # whose record would be cut short. The error is the server's own for a too-big packet.
        payload = "y" * (17 << 20)  # would be a COM_QUERY split over two frames
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute("SELECT LENGTH(%s)", (payload,))
        assert refused.value.args[0] == 1153 and "the audit records" in refused.value.args[1]


def test_init_db_ping_reset_connection_and_field_list(mysql_gateway):
    with mysql_gateway.connect() as conn, conn.cursor() as cur:
        conn.select_db(mysql_gateway.db.database)  # COM_INIT_DB
        conn.ping()
        cur.execute("SET @sdm_v = 7")
        conn._execute_command(0x1F, b"")  # COM_RESET_CONNECTION: PyMySQL has no API for it
        conn._read_ok_packet()
        cur.execute("SELECT @sdm_v")
        assert cur.fetchone()[0] is None  # the upstream session was reset
        conn._execute_command(0x04, b"orders\0")  # COM_FIELD_LIST
        fields = 0
        while not conn._read_packet().is_eof_packet():
            fields += 1
        assert fields == 4
        cur.execute("SELECT 1")
    assert mysql_gateway.query_events("COM_RESET_CONNECTION")
    assert mysql_gateway.query_events("COM_INIT_DB")


def test_prepared_statements_are_relayed_and_audited_with_their_text(mysql_gateway):
    """PyMySQL has no server-side prepare: drive COM_STMT_* over its authenticated connection."""
    with mysql_gateway.connect() as conn:
        conn._execute_command(0x16, "SELECT id FROM orders WHERE id <= ? /*sdm_cell='prep-cell'*/")
        ok = conn._read_packet().get_all_data()
        stmt_id, ncols, nparams = struct.unpack_from("<IHH", ok, 1)
        assert (ncols, nparams) == (1, 1)
        for _ in range(nparams + 1 + ncols + 1):  # definitions and their EOFs (PyMySQL: no DEPRECATE_EOF)
            conn._read_packet()
        for limit in (3, 5):
            conn._execute_command(0x17, struct.pack("<IBI", stmt_id, 0, 1) + b"\x00\x01\x08\x00"
                                  + struct.pack("<q", limit))
            conn._read_packet()  # column count
            for _ in range(ncols + 1):
                conn._read_packet()
            rows = 0
            while not conn._read_packet().is_eof_packet():
                rows += 1
            assert rows == limit
        conn._execute_command(0x19, struct.pack("<I", stmt_id))  # COM_STMT_CLOSE: no answer
        with conn.cursor() as cur:
            cur.execute("SELECT 'after close'")
            assert cur.fetchone() == ("after close",)
    events = mysql_gateway.query_events("SELECT id FROM orders WHERE id <= ?")
    assert len(events) == 2  # the two executions (the prepare itself runs nothing)
    for event, rows in zip(events, (3, 5)):
        assert event["details"] == {"prepared_statement": stmt_id}
        assert event["client"]["cell_id"] == "prep-cell" and event["user"] == "ann"
        end = mysql_gateway.outcome(event)
        assert end["rows"] == rows and end["status"] == "ok" and end["duration_ms"] is not None


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="no mariadb CLI")
def test_mariadb_cli(mysql_gateway):
    gw = mysql_gateway
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", "read-only",
         f"-p{gw.tokens['ann']}", "--protocol=TCP", "--skip-ssl", "--batch", "--skip-column-names", DATASOURCE,
         "-e", "SELECT CURRENT_USER(); SELECT COUNT(*) FROM orders; SHOW TABLES"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:2] == ["sdm_readonly@%", "600"] and "customers" in lines
    bad = subprocess.run(
        ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", "read-only", "-pnot-a-token",
         "--protocol=TCP", "--skip-ssl", DATASOURCE, "-e", "SELECT 1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "ERROR 1045 (28000)" in bad.stderr, bad.stderr


# ---- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_listener(mysql_gateway, tmp_path_factory):
    """A listener that is not on loopback (0.0.0.0): TLS is then required of every client."""
    from sdm_proxy.tls import create_gateway_tls

    tls_dir = tmp_path_factory.mktemp("mysql-tls")
    create_gateway_tls(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir / "gateway.pem", tls_dir / "gateway-key.pem")
    cp = mysql_gateway.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))

    async def start():
        return await start_mysql_listener("0.0.0.0", 0, unlock_client=client, audit_log=cp.audit, tls_context=ctx)

    listener = mysql_gateway.loop.run(start())
    yield listener, str(tls_dir / "ca.pem")
    mysql_gateway.loop.run(listener.close())


def test_listener_off_loopback_needs_a_certificate(mysql_gateway):
    cp = mysql_gateway.cp
    client = in_process_unlock_client(cp, enrol_local_proxy(cp))
    with pytest.raises(UsageError, match="without TLS"):
        mysql_gateway.loop.run(start_mysql_listener("0.0.0.0", 0, unlock_client=client, audit_log=cp.audit))


def test_tls_required_off_loopback(mysql_gateway, tls_listener):
    listener, ca = tls_listener
    kw = mysql_gateway.kwargs(port=listener.port)
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(**kw, ssl_disabled=True)
    assert info.value.args[0] == 3159 and "TLS" in info.value.args[1]
    for _ in range(5):  # PyMySQL pipelines its ClientHello behind the SSLRequest; some runs coalesce them
        with pymysql.connect(**kw, ssl_ca=ca, ssl_verify_identity=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), REPEAT('t', 300000)")
            user, big = cur.fetchone()
            assert user == "sdm_readonly@%" and len(big) == 300000
            cur.execute("SELECT COUNT(*) FROM orders")
            assert cur.fetchone()[0] == 600


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="no mariadb CLI")
def test_mariadb_cli_over_tls(mysql_gateway, tls_listener):
    listener, ca = tls_listener
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(listener.port), "-u", "read-only",
         f"-p{mysql_gateway.tokens['ann']}", "--protocol=TCP", f"--ssl-ca={ca}", "--ssl-verify-server-cert",
         "--batch", "--skip-column-names", DATASOURCE, "-e", "SELECT CURRENT_USER(); SHOW STATUS LIKE 'Ssl_cipher'"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "sdm_readonly@%"
