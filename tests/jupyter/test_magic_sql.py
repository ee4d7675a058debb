"""%sdm sql / %sdm connect in real kernels, through the gateway's PostgreSQL listener to the private
password-enforcing cluster: results, bind parameters, errors, cell attribution and interrupts."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest

from sdm_jupyter.attribution import parse_comment

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter, pytest.mark.listener]

NOTEBOOK = "work/analysis.ipynb"


@pytest.fixture
def kernel(gw, kernel_factory):
    k = kernel_factory(gw.kernel_env("analyst", JPY_SESSION_NAME=NOTEBOOK))
    k.ok("%load_ext sdm_jupyter\nimport pandas as pd")
    return k


def test_sql_returns_dataframe_with_row_count(kernel, gw):
    r = kernel.ok("df = %sdm sql prod SELECT current_user AS who, count(*) AS n FROM orders GROUP BY 1\n"
                  "print(type(df).__name__, df.to_dict('records'))")
    assert "DataFrame [{'who': 'sdm_readonly', 'n': 600}]" in r.stdout
    assert "1 row × 2 columns from prod as read-only" in r.stdout


def test_cell_magic_output_and_limit(kernel):
    r = kernel.ok("%%sdm sql prod -o firsts --limit 5\nSELECT id, amount FROM orders ORDER BY id")
    assert "first 5 rows (limit 5 reached" in r.stdout
    assert kernel.ok("print(firsts.shape, list(firsts['id']))").stdout.strip() == "(5, 2) [1, 2, 3, 4, 5]"
    whole = kernel.ok("%sdm sql prod SELECT id FROM orders")
    assert "600 rows × 1 column" in whole.stdout
    kernel.ok("%config SdmMagics.limit = 3")
    assert "first 3 rows" in kernel.ok("%sdm sql prod SELECT id FROM orders").stdout


def test_limit_with_several_statements_says_the_whole_result_was_fetched(kernel):
    """Review: with several statements libpq fetches the last result whole before --limit cuts it;
    the line said the rest was not fetched."""
    r = kernel.ok("%%sdm sql prod --limit 5\nSET search_path TO public; SELECT id FROM orders ORDER BY id")
    assert "first 5 rows (limit 5 reached; the whole result was fetched: several statements)" in r.stdout
    single = kernel.ok("%sdm sql prod --limit 5 SELECT id FROM orders ORDER BY id")
    assert "the rest was not fetched" in single.stdout


def test_empty_result_keeps_columns(kernel):
    r = kernel.ok("e = %sdm sql prod SELECT id, amount FROM orders WHERE id < 0\nprint(list(e.columns), len(e))")
    assert "['id', 'amount'] 0" in r.stdout and "0 rows × 2 columns" in r.stdout


def test_bind_parameters_are_values_not_sql(kernel, gw):
    kernel.ok("cid = 7\nname = \"Customer 007' OR '1'='1\"")
    r = kernel.ok("a = %sdm sql prod SELECT id, name FROM customers WHERE id = :cid\nprint(a.to_dict('records'))")
    assert "[{'id': 7, 'name': 'Customer 007'}]" in r.stdout
    r = kernel.ok("b = %sdm sql prod SELECT count(*) AS n FROM customers WHERE name = :name OR id = -1\n"
                  "print(b['n'][0])")
    assert r.stdout.strip().endswith("0")
    # The statement the gateway saw has a placeholder; the injected text never became SQL.
    logged = gw.query_events("WHERE name = $1 OR id = -1")
    assert logged and all("OR '1'='1" not in e["query"] for e in logged)


def test_the_line_form_is_not_formatted_with_the_namespace(kernel, gw):
    """Review: IPython expanded `{expr}` and `$name` in the line before the magic saw it, so a
    value became SQL text (and `$$...$$` or `'{1,2,3}'` were rewritten)."""
    kernel.ok("name = \"x' OR '1'='1\"")
    r = kernel.ok("c = %sdm sql prod SELECT count(*) AS n FROM customers WHERE name = '{name}'\nprint(c['n'][0])")
    assert r.stdout.strip().endswith("0")
    assert gw.query_events("WHERE name = '{name}'")  # the braces reached the database as written
    r = kernel.ok("d = %sdm sql prod SELECT $$a b$$ AS s, '{1,2,3}'::int[] AS arr\nprint(d['s'][0], list(d['arr'][0]))")
    assert "a b [1, 2, 3]" in r.stdout


def test_a_copy_to_stdout_is_one_line_without_a_traceback(kernel):
    """Review: the failed statement's connection (a COPY still running on it) went back to the pool,
    whose reset failed and printed SQLAlchemy's traceback next to the one-line error."""
    r = kernel.run("%sdm sql prod COPY (SELECT 1) TO STDOUT")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: prod:") and "COPY" in lines[0], r.stderr
    assert "1 row" in kernel.ok("%sdm sql prod SELECT 1 AS one").stdout


def test_refused_write_is_one_line_and_kernel_stays_usable(kernel):
    r = kernel.run("%sdm sql prod INSERT INTO orders (customer_id, amount, created_at) VALUES (1, 1, now())")
    assert r.status == "error" and r.reply["ename"] == "UsageError"
    assert r.reply["evalue"] == "prod: permission denied for table orders [42501]"
    assert "Traceback" not in r.stderr
    sql_error = kernel.run("%sdm sql prod SELECT no_such_column FROM orders")
    assert 'column "no_such_column" does not exist [42703]' in sql_error.reply["evalue"]
    assert "1 row" in kernel.ok("%sdm sql prod SELECT 1 AS one").stdout


def test_connect_engine_and_read_sql_are_attributed(kernel, gw):
    kernel.ok("engine = %sdm connect prod")
    r = kernel.ok("print(pd.read_sql('SELECT current_user AS who, 41 + 1 AS marker_connect', engine)"
                  ".to_dict('records'))", cell_id="cell-read-sql")
    assert "[{'who': 'sdm_readonly', 'marker_connect': 42}]" in r.stdout
    [event] = gw.query_events("marker_connect")
    assert event["user"] == "analyst" and event["credential"] == "read-only"
    assert event["client"]["cell_id"] == "cell-read-sql"
    assert event["client"]["notebook"] == NOTEBOOK
    assert event["client"]["kernel_id"] == kernel.kernel_id
    assert isinstance(event["client"]["execution_count"], int)
    # Once per statement, parsed back the same.
    assert event["query"].count("/*sdm_") == 1 and parse_comment(event["query"])["sdm_cell"] == "cell-read-sql"
    assert "sdms." not in repr(kernel.ok("print(repr(engine), engine.url)").stdout)


def test_magic_statements_carry_cell_id_or_execution_count(kernel, gw):
    kernel.ok("%sdm sql prod SELECT 'tagged' AS marker_with_cell", cell_id="c-0042")
    [tagged] = gw.query_events("marker_with_cell")
    assert tagged["client"]["cell_id"] == "c-0042" and tagged["client"]["notebook"] == NOTEBOOK
    kernel.ok("%sdm sql prod SELECT 'untagged' AS marker_without_cell")  # no cellId metadata
    [untagged] = gw.query_events("marker_without_cell")
    assert untagged["client"]["cell_id"] == str(untagged["client"]["execution_count"])


def test_activity_shows_my_queries(kernel):
    kernel.ok("%sdm sql prod SELECT 'mine' AS marker_activity", cell_id="c-act")
    r = kernel.ok("a = %sdm activity -n 20\nq = a[a['type'] == 'query']\n"
                  "print(q['query'].str.contains('marker_activity').any(), set(q['cell_id']) >= {'c-act'})")
    assert r.stdout.split() == ["True", "True"]


def test_credential_choice_with_grant(kernel, gw):
    gw.state.grant("analyst", "prod", "superuser", timedelta(minutes=10))
    try:
        ambiguous = kernel.run("%sdm sql prod SELECT 1")
        assert "several credentials (read-only, superuser)" in ambiguous.reply["evalue"]
        assert "--as CREDENTIAL" in ambiguous.reply["evalue"]
        r = kernel.ok("s = %sdm sql prod --as superuser SELECT current_user AS who\nprint(s['who'][0])")
        assert "sdm_super" in r.stdout
    finally:
        from sdm_proxy.control import grants

        grants.revoke_grants(gw.state.cp, gw.state.admin, "analyst", "prod", "superuser")


def test_revoked_session_is_replaced_by_engines_and_magic(kernel, gw):
    from sdm_proxy.control import sessions

    kernel.ok("engine = %sdm connect prod")
    sid = kernel.ok("w = %sdm whoami\nprint(w['session_id'])").stdout.strip()
    sessions.revoke_session(gw.state.cp, gw.state.admin, sid)
    kernel.ok("engine.dispose()")  # the next statement needs a new connection: the old token is refused
    r = kernel.ok("print(pd.read_sql('SELECT 1 AS x', engine).to_dict('records'))")
    assert "[{'x': 1}]" in r.stdout
    assert "1 row" in kernel.ok("%sdm sql prod SELECT 1 AS y").stdout
    assert kernel.ok("w = %sdm whoami\nprint(w['session_id'])").stdout.strip() != sid


def _active_sleepers(db) -> int:
    with psycopg.connect(**db.connect_kwargs("bootstrap"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(%marker_sleep%' "
                            "AND state = 'active' AND pid <> pg_backend_pid()").fetchone()[0]


def _poll(predicate, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_interrupt_cancels_query_on_the_database(kernel, gw):
    msg_id = kernel.send("%sdm sql prod SELECT pg_sleep(60) AS marker_sleep")
    _poll(lambda: _active_sleepers(gw.db) == 1, "the query to reach the database")
    kernel.km.interrupt_kernel()
    r = kernel.collect(msg_id)
    assert r.status == "error" and r.reply["ename"] == "UsageError"
    assert "query cancelled" in r.reply["evalue"]
    _poll(lambda: _active_sleepers(gw.db) == 0, "the database to stop the query")
    assert "1 row" in kernel.ok("%sdm sql prod SELECT 2 AS after_interrupt").stdout


def test_interrupt_cancels_read_sql_on_engine(kernel, gw):
    kernel.ok("engine = %sdm connect prod")
    msg_id = kernel.send("pd.read_sql('SELECT pg_sleep(60) AS marker_sleep', engine)")
    _poll(lambda: _active_sleepers(gw.db) == 1, "the query to reach the database")
    kernel.km.interrupt_kernel()
    r = kernel.collect(msg_id)
    assert r.status == "error" and r.reply["ename"] in ("KeyboardInterrupt", "QueryCanceled", "OperationalError")
    _poll(lambda: _active_sleepers(gw.db) == 0, "the database to stop the query")
    assert "[{'x': 1}]" in kernel.ok("print(pd.read_sql('SELECT 1 AS x', engine).to_dict('records'))").stdout


def test_progress_line_for_long_fetches(kernel):
    kernel.ok("%config SdmMagics.progress_after = 0.0")
    kernel.ok("%config SdmMagics.fetch_size = 1000")
    r = kernel.ok("%sdm sql prod SELECT g FROM generate_series(1, 20000) g")
    texts = [d["data"].get("text/plain", "") for d in r.displays]
    assert any("rows fetched" in t for t in texts) and texts[-1] == ""  # shown, then cleared
    assert "20,000 rows × 1 column" in r.stdout
