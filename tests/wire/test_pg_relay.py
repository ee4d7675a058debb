"""The relay: real clients through the gateway, and every statement in the audit log."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import psycopg
import pytest

from tests.wire import pgraw
from tests.wire.stack import CANCEL_SCRIPT, DATASOURCE

pytestmark = pytest.mark.postgres


def unique(prefix: str) -> str:
    return f"{prefix}_{time.monotonic_ns()}"


def test_read_only_insert_fails_with_the_databases_own_error_and_the_connection_lives(gateway):
    marker = unique("ro_insert")
    with psycopg.connect(**gateway.kwargs("ann", "read-only"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(f"INSERT INTO customers (name, email, country) VALUES ('{marker}', '{marker}', 'DE')")
        assert info.value.sqlstate == "42501"
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 200
    (start,) = gateway.query_events(marker)
    end = gateway.outcome(start)
    assert end["status"] == "error" and end["error"].startswith("42501")
    assert start["user"] == "ann" and start["credential"] == "read-only"
    assert start["db_user"] == gateway.pg.logins["read-only"].username


def test_simple_query_is_audited_with_rows_duration_and_cell_tags(gateway):
    tags = "/*sdm_cell='cell%2042',sdm_notebook='analysis%2Fq1.ipynb',sdm_kernel='k-1',sdm_execution_count='7'*/"
    sql = f"SELECT id FROM orders WHERE id <= 25 {tags}"
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        assert len(conn.execute(sql).fetchall()) == 25
    (start,) = [e for e in gateway.query_events("cell%2042")]
    assert start["status"] == "started" and start["query"] == sql
    assert start["client"]["cell_id"] == "cell 42"
    assert start["client"]["notebook"] == "analysis/q1.ipynb"
    assert start["client"]["kernel_id"] == "k-1" and start["client"]["execution_count"] == 7
    assert start["client"]["addr"].startswith("127.0.0.1:")
    end = gateway.outcome(start)
    assert end["rows"] == 25 and end["status"] == "ok" and end["duration_ms"] >= 0


def test_multi_statement_simple_query_sums_rows(gateway):
    marker = unique("multi")
    with psycopg.connect(**gateway.kwargs("ann"), autocommit=True) as conn:
        conn.execute(f"SELECT 1 AS {marker}; SELECT generate_series(1, 4)")
    (start,) = gateway.query_events(marker)
    assert gateway.outcome(start)["rows"] == 5


def test_extended_protocol_and_prepared_statements_are_audited_when_executed(gateway):
    marker = unique("prep")
    with psycopg.connect(**gateway.kwargs("ann"), prepare_threshold=2) as conn:
        for i in range(5):
            row = conn.execute(f"SELECT %s::int * 2 AS {marker}", (i,)).fetchone()
            assert row == (i * 2,)
    starts = gateway.query_events(marker)
    assert len(starts) == 5, "one query event per execution, prepared ones included"
    assert all("$1" in e["query"] for e in starts), "the statement text, with its placeholders"
    assert any((e.get("details") or {}).get("prepared_statement") for e in starts), "server-side prepared"
    for e in starts:
        end = gateway.outcome(e)
        assert end["rows"] == 1 and end["status"] == "ok" and end["duration_ms"] is not None


def test_pipeline_mode_is_audited_in_order_with_rows(gateway):
    marker = unique("pipe")
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        with conn.pipeline():
            curs = [conn.execute(f"SELECT generate_series(1, %s) AS {marker}_{i}", (i,)) for i in range(1, 6)]
        assert [len(c.fetchall()) for c in curs] == [1, 2, 3, 4, 5]
    starts = gateway.query_events(marker)
    assert [e["query"].split(f"{marker}_")[1] for e in starts] == ["1", "2", "3", "4", "5"]
    assert [gateway.outcome(e)["rows"] for e in starts] == [1, 2, 3, 4, 5]


def test_an_error_in_a_pipeline_marks_the_skipped_statements(gateway):
    marker = unique("pipe_err")
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute(f"SELECT 1 AS {marker}_a")
            conn.execute(f"SELECT 1/0 AS {marker}_b")
            conn.execute(f"SELECT 2 AS {marker}_c")
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
    a, b, c = (gateway.outcome(gateway.query_events(f"{marker}_{x}")[0]) for x in "abc")
    assert a["status"] == "ok"
    assert b["status"] == "error" and b["error"].startswith("22012")
    assert c["status"] == "error" and "not executed" in c["error"]


def _raw_session(gateway, user="ann", credential="read-only"):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user=credential, database=DATASOURCE,
                             password=gateway.tokens[user])
    assert msgs[-1][0] == b"Z", msgs[-1]
    return sock


def test_a_failed_parse_cannot_make_the_audit_show_another_statement(gateway):
    """Parse(s1, bad) Sync Parse(s1, real) Sync Bind(s1) Execute Sync, all sent at once: the audit
    must name the statement that really ran."""
    marker = unique("evade")
    sock = _raw_session(gateway)
    sock.sendall(pgraw.parse("s1", f"SELEC 'decoy_{marker}'") + pgraw.sync()
                 + pgraw.parse("s1", f"SELECT 'real_{marker}'") + pgraw.sync()
                 + pgraw.bind("", "s1") + pgraw.execute() + pgraw.sync())
    msgs = pgraw.read_until_ready(sock, 3)
    assert pgraw.data_rows(msgs) == [[f"real_{marker}"]]
    sock.close()
    executed = [e for e in gateway.query_events(marker)]
    assert [e["query"] for e in executed] == [f"SELECT 'real_{marker}'"]


def test_a_refused_duplicate_parse_keeps_the_original_text(gateway):
    """A named Parse of an existing name fails (42P05); Bind then runs the ORIGINAL statement."""
    marker = unique("dup")
    sock = _raw_session(gateway)
    sock.sendall(pgraw.parse("s1", f"SELECT 'orig_{marker}'") + pgraw.sync())
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.parse("s1", f"SELECT 'decoy_{marker}'") + pgraw.sync()
                 + pgraw.bind("", "s1") + pgraw.execute() + pgraw.sync())
    msgs = pgraw.read_until_ready(sock, 2)
    assert pgraw.data_rows(msgs) == [[f"orig_{marker}"]]
    errors = [pgraw.error_fields(p)["C"] for t, p in msgs if t == b"E"]
    assert errors == ["42P05"]
    sock.close()
    assert [e["query"] for e in gateway.query_events(marker)] == [f"SELECT 'orig_{marker}'"]


def test_a_close_skipped_by_an_error_does_not_hide_the_statement(gateway):
    marker = unique("close_skip")
    sock = _raw_session(gateway)
    sock.sendall(pgraw.parse("s1", f"SELECT 'orig_{marker}'") + pgraw.sync())
    pgraw.read_until_ready(sock)
    # The Close is skipped (error before it in its segment), so s1 keeps its text; the later Parse fails.
    sock.sendall(pgraw.query("SELECT 1") [0:0] + pgraw.parse("", "SELECT 1/0") + pgraw.bind("", "")
                 + pgraw.execute() + pgraw.close_statement("s1") + pgraw.sync()
                 + pgraw.parse("s1", f"SELECT 'decoy_{marker}'") + pgraw.sync()
                 + pgraw.bind("", "s1") + pgraw.execute() + pgraw.sync())
    msgs = pgraw.read_until_ready(sock, 3)
    assert pgraw.data_rows(msgs) == [[f"orig_{marker}"]]
    sock.close()
    assert [e["query"] for e in gateway.query_events(marker)] == [f"SELECT 'orig_{marker}'"]


def test_sql_execute_of_a_protocol_statement_records_its_text(gateway):
    marker = unique("sqlexec")
    sock = _raw_session(gateway)
    sock.sendall(pgraw.parse("s_exec", f"SELECT 'inner_{marker}'") + pgraw.sync())
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query(f"EXECUTE s_exec /* {marker} */"))
    msgs = pgraw.read_until_ready(sock)
    assert pgraw.data_rows(msgs) == [[f"inner_{marker}"]]
    sock.close()
    (event,) = gateway.query_events(f"EXECUTE s_exec /* {marker}")
    assert event["details"]["executes"] == {"s_exec": f"SELECT 'inner_{marker}'"}


def test_copy_out_and_in_pass_through(gateway):
    table = unique("copy_t")
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy("COPY (SELECT id, amount FROM orders ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                buf.write(block)
        lines = buf.getvalue().decode().splitlines()
        assert len(lines) == 600 and lines[0].startswith("1\t")
    with psycopg.connect(**gateway.kwargs("bob", "superuser")) as conn:
        conn.execute(f"CREATE TEMP TABLE {table} (id int, name text)")
        with conn.cursor().copy(f"COPY {table} (id, name) FROM STDIN") as copy:
            for i in range(5000):
                copy.write_row((i, f"name {i}"))
        assert conn.execute(f"SELECT count(*), sum(id) FROM {table}").fetchone() == (5000, sum(range(5000)))
        with conn.cursor().copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            assert sum(1 for _ in copy.rows()) == 5000
    out = gateway.outcome(gateway.query_events("COPY (SELECT id, amount FROM orders ORDER BY id) TO STDOUT")[-1])
    assert out["rows"] == 600
    into = gateway.outcome(gateway.query_events(f"COPY {table} (id, name) FROM STDIN")[-1])
    assert into["rows"] == 5000 and into["user"] == "bob"


def test_async_psycopg(gateway):
    async def main():
        async with await psycopg.AsyncConnection.connect(**gateway.kwargs("ann")) as conn:
            cur = await conn.execute("SELECT current_user, count(*) FROM orders GROUP BY 1")
            row = await cur.fetchone()
            cur = await conn.execute("SELECT %s::text", ("async-param",))
            return row, await cur.fetchone()

    row, param = asyncio.run(main())
    assert row == (gateway.pg.logins["read-only"].username, 600) and param == ("async-param",)


def test_concurrent_connections_each_see_their_own_results(gateway):
    errors = []

    def worker(n):
        try:
            with psycopg.connect(**gateway.kwargs("ann")) as conn:
                for i in range(20):
                    assert conn.execute("SELECT %s::int + %s::int", (n, i)).fetchone() == (n + i,)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_large_result_streams_through(gateway):
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        cur = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
        n = 0
        total = 0
        for row in cur:
            n += 1
            total += row[0]
        assert n == 200000 and total == 200000 * 200001 // 2
    end = gateway.outcome(gateway.query_events("FROM generate_series(1, 200000) g")[-1])
    assert end["rows"] == 200000


def test_notices_notifications_and_transaction_status_pass_through(gateway):
    notices = []
    with psycopg.connect(**gateway.kwargs("bob", "superuser"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        conn.execute("LISTEN sdm_wire_test")
        conn.execute("NOTIFY sdm_wire_test, 'payload-1'")
        got = next(conn.notifies(timeout=5, stop_after=1))
        assert got.payload == "payload-1"
    assert notices == ["hello from plpgsql"]
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        conn.execute("SELECT 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_cancel_of_pg_sleep_ends_within_2s(gateway, how):
    """psycopg's cancel() (libpq PQcancel, a blocking call that holds the GIL: so the client runs in its
    own process, as a real notebook kernel does) and cancel_safe() (the non-blocking API)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT, json.dumps(gateway.kwargs("ann")), how],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "cancelled" and result["alive"]
    assert result["elapsed"] < 2.0, f"cancel took {result['elapsed']:.2f}s"
    end = gateway.outcome(gateway.query_events(f"SELECT pg_sleep(30) /* cancel-test-{how} */")[-1])
    assert end["status"] == "cancelled" and end["error"].startswith("57014")


def test_cancel_with_a_wrong_key_is_ignored(gateway):
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        sock = pgraw.connect(gateway.host, gateway.port)
        import struct
        sock.sendall(struct.pack("!iiii", 16, 80877102, conn.info.backend_pid, 12345))
        assert sock.recv(10) == b""  # no answer, just closed
        sock.close()
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_slow_reader_is_backpressured(gateway):
    """A client that stops reading must stall the upstream read, not fill the gateway's memory."""
    import socket

    sock = _raw_session(gateway)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(pgraw.query("SELECT repeat('y', 1000) FROM generate_series(1, 300000) /* slow-reader */"))
    session = gateway.wait_for(lambda: next((s for s in list(gateway.listener.sessions)
                                             if s.tracker.pending and s._relay_proto is not None
                                             and s._relay_proto._reading_paused), None),
                               what="the upstream read to pause")
    time.sleep(1.0)  # the database keeps producing ~300 MB; none of it may pile up in the gateway
    held = session._relay_proto._out_size + session.writer.transport.get_write_buffer_size()
    assert session._relay_proto._reading_paused
    assert held <= 4 << 20, f"{held} bytes held for a client that does not read"
    # Reading again resumes the flow: drain everything up to ReadyForQuery.
    sock.settimeout(60)
    received = 0
    while True:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed early"
        received += len(chunk)
        if chunk.endswith(pgraw.message(b"Z", b"I")):
            break
    sock.close()
    assert received > 300_000 * 1000
