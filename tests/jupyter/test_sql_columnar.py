"""The column-wise fetch of %sdm sql (sdm_jupyter.fast_fetch / columnar) against the row path, through
the real gateway to the private PostgreSQL cluster: the same DataFrame (values and dtypes) for every
type and NULL pattern, the same limits and errors, one audited statement carrying the cell's tags."""

from __future__ import annotations

import time
from datetime import timedelta

import pandas as pd
import pytest

from sdm_jupyter.db import make_engine, run_statement
from sdm_jupyter.fast_fetch import ColumnarResult
from sdm_jupyter.gateway_client import GatewayClient, GatewayConfig

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter, pytest.mark.listener]


@pytest.fixture(scope="module")
def client(gw):
    env = {"SDM_GATEWAY_URL": gw.api_url, "SDM_API_KEY": gw.keys["analyst"], "SDM_GATEWAY_POSTGRES": gw.postgres,
           "SDM_HOME": str(gw.state.home.root.parent / "no-home")}
    c = GatewayClient(GatewayConfig.discover(env))
    yield c
    c.close()


def _engine(client, **kwargs):
    host, port = client.postgres_address()
    return make_engine(host=host, port=port, datasource="prod", credential="read-only", token=client.token,
                       **kwargs)


@pytest.fixture(scope="module")
def engine(client):
    e = _engine(client)
    yield e
    e.dispose()


def run(engine, client, sql, values=None, *, columnar, tags=None, **kw):
    return run_statement(engine, sql, values or {}, tags=tags or {"sdm_cell": "test"}, datasource="prod",
                         address=client.postgres_address(), columnar=columnar, **kw)


def same(engine, client, sql, values=None, *, binary=None, **kw) -> pd.DataFrame:
    """Run ``sql`` both ways; the frames must be equal, value for value and dtype for dtype."""
    rows = run(engine, client, sql, values, columnar=False, **kw)
    cols = run(engine, client, sql, values, columnar=True, **kw)
    assert isinstance(cols, ColumnarResult), "the column-wise path was not taken"
    if binary is not None:
        assert cols.binary is binary
    assert (cols.truncated, cols.rowcount, cols.columns) == (rows.truncated, rows.rowcount, rows.columns)
    expected, got = rows.frame(), cols.frame()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.dtypes) == list(expected.dtypes)
    return got


TEXTS = ["plain", "", "comma, here", 'double "quotes"', "it's", "new\nline", "cr\r\nlf", "tab\there",
         "back\\slash", "ünïcødé ✓ 😀", "  padded  ", "NULL", "\\N", "NaN", "None", "1,2\n3"]


def _values_sql(rows: list[str], columns: str) -> str:
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS t({columns})"


def test_common_types_equal_and_binary(engine, client):
    # Later rows quote their literals, so every column keeps the first row's type.
    rows = [
        ("(1::int2, 1::int4, 1::int8, 1.5::float8, true, 'a'::text, 'v'::varchar(5), 'c'::char(4), 'n'::name, "
         "'2024-01-01 12:34:56.789012'::timestamp, '2024-03-31 01:30:00+00'::timestamptz, '2024-02-29'::date, "
         "1.5::numeric, '5a7e0e0e-3b8e-4b8a-9d6e-0e0e0e0e0e0e'::uuid, '{\"a\": [1, 2]}'::json, "
         "'{\"b\": null}'::jsonb, '\\x00ff'::bytea)"),
        ("('-32768', '-2147483648', '-9223372036854775808', 'NaN', false, '', '', '', '', '0001-01-01 00:00:00', "
         "'0001-01-01 00:00:00+00', '0001-01-01', 'NaN', NULL, 'null', '[]', '')"),
        ("('32767', '2147483647', '9223372036854775807', 'Infinity', true, 'ünï 😀', 'x,y', 'q\"', 'z', "
         "'9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00', '9999-12-31', "
         "'123456789012345678901234567890.123456789', NULL, '1.5', '\"s\"', NULL)"),
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        ("('0', '0', '4503599627370497', '-Infinity', NULL, 'x', NULL, NULL, NULL, '1999-12-31 23:59:59.999999', "
         "'1970-01-01 00:00:00+00', '1999-12-31', '-0.000000000001', NULL, NULL, NULL, NULL)"),
    ]
    df = same(engine, client, _values_sql(rows, "i2, i4, i8, f8, b, t, v, c, n, ts, tstz, d, num, u, j, jb, by"),
              binary=True)
    assert df["i8"].dtype == "float64" and df["f8"].dtype == "float64"  # NULLs, as from_records gives


def test_text_values_with_special_characters(engine, client):
    rows = [f"({i}, {_literal(t)})" for i, t in enumerate(TEXTS)] + [f"({len(TEXTS)}, NULL)"]
    df = same(engine, client, _values_sql(rows, "i, t") + " ORDER BY i", binary=True)
    assert list(df["t"][: len(TEXTS)]) == TEXTS and pd.isna(df["t"].iloc[-1])
    # NULL and the empty string stay apart, also alone in a column and with no NULL at all.
    same(engine, client, "SELECT '' AS e FROM generate_series(1, 3)", binary=True)
    same(engine, client, "SELECT NULLIF(g % 2, 0)::text AS t, ''::text AS e FROM generate_series(1, 4) g")


def _literal(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") \
        .replace("\t", "\\t") + "'"


@pytest.mark.parametrize("expr", ["g", "g::int8 * 3000000000", "g * 0.5::float8", "g % 2 = 0", "g::text",
                                  "(g / 3.0)::numeric(12, 4)", "timestamp '2024-01-01' + g * interval '1 day'",
                                  "timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'",
                                  "date '2024-01-01' + g", "g::float4 / 3", "ARRAY[g, g + 1]"])
def test_null_patterns_across_chunks(engine, client, expr):
    """No NULL, NULLs only in a later chunk, some NULLs, only NULLs, no rows: as the row path."""
    base = f"SELECT {expr} AS v FROM generate_series(1, 2500) g"
    same(engine, client, base, fetch_size=500)
    same(engine, client, f"SELECT CASE WHEN g < 2000 OR g % 7 <> 0 THEN {expr} END AS v "
                         "FROM generate_series(1, 2500) g", fetch_size=500)
    same(engine, client, f"SELECT CASE WHEN g % 3 = 0 THEN {expr} END AS v FROM generate_series(1, 50) g")
    same(engine, client, f"SELECT CASE WHEN false THEN {expr} END AS v FROM generate_series(1, 50) g")
    same(engine, client, f"{base} WHERE false")


def test_types_without_exact_binary_use_text_results(engine, client):
    sql = ("SELECT 1.1::float4 AS f4, interval '1 year 2 months 3 days 04:05:06.7' AS iv, time '12:34:56.5' AS tm, "
           "ARRAY[1, NULL]::int[] AS arr, ARRAY['a,b', NULL, '\"q\"'] AS tarr, inet '10.0.0.1/8' AS ip, "
           "point(1, 2) AS pt, money '12.34' AS m, timestamp '2024-01-01 01:02:03' AS ts, "
           "timestamptz '2024-07-01 12:00+02' AS tstz, date '2024-01-01' AS d, g AS i "
           "FROM generate_series(1, 3) g")
    same(engine, client, sql, binary=False)


def test_shapes(engine, client):
    same(engine, client, "SELECT id, amount FROM orders WHERE id < 0")  # no rows: columns kept
    same(engine, client, "SELECT 1 AS a, 'x' AS a, 2.5::float8 AS a")  # duplicate names
    same(engine, client, 'SELECT 1 AS "my col", 2 AS "ü ✓", \'a%b\' AS pct, \'x\' LIKE \'%\' AS "like"')
    bare = [run(engine, client, "SELECT FROM generate_series(1, 3)", columnar=c) for c in (False, True)]
    pd.testing.assert_frame_equal(bare[1].frame(), bare[0].frame())  # rows without columns: the row path
    same(engine, client, "SELECT id, customer_id, amount, created_at FROM orders ORDER BY id", binary=True)
    same(engine, client, "SELECT 1 AS one;")
    same(engine, client, "SELECT 1 AS one -- a trailing comment")


def test_session_timezone_and_datestyle(client):
    engine = _engine(client, pool_size=1, max_overflow=0)  # one connection: the SETs stick
    try:
        sql = ("SELECT timestamptz '2024-03-10 06:59:59+00' + g * interval '30 minutes' AS tz, "
               "timestamp '2024-03-10 01:59:59' + g * interval '30 minutes' AS ts, date '2024-03-10' + g AS d "
               "FROM generate_series(0, 100) g")
        for zone in ("America/New_York", "Asia/Kolkata"):
            assert run(engine, client, f"SET TimeZone = '{zone}'", columnar=True).frame() is None
            df = same(engine, client, sql, binary=True)
            assert zone in str(df["tz"].dtype)
        # Binary results do not depend on DateStyle (the row path cannot even parse timestamptz in it).
        run(engine, client, "SET DateStyle = 'SQL, DMY'", columnar=True)
        pd.testing.assert_frame_equal(run(engine, client, sql, columnar=True).frame(), df, check_exact=True)
        same(engine, client, "SELECT ts, d FROM (" + sql + ") AS q", binary=True)
    finally:
        engine.dispose()


def test_limit_and_truncation(engine, client):
    sql = "SELECT g AS id, g::text AS t FROM generate_series(1, 2500) g"
    for limit in (1, 499, 500, 501, 1234, 2499, 2500, 2501):
        same(engine, client, sql, limit=limit, fetch_size=500)
    cut = run(engine, client, sql, limit=7, fetch_size=500, columnar=True)
    assert cut.truncated and cut.frame().shape == (7, 2) and list(cut.frame()["id"]) == list(range(1, 8))
    # The connection is usable afterwards (the rest was cancelled and drained).
    assert run(engine, client, "SELECT 2 AS two", columnar=True).frame()["two"].tolist() == [2]


def test_bind_parameters(engine, client):
    df = same(engine, client, "SELECT id, name, country FROM customers WHERE id <= :n AND name <> :s ORDER BY id",
              {"n": 9, "s": "x' OR '1'='1"}, binary=True)
    assert len(df) == 9
    # A parameter's own type decides the column's, as when the statement runs.
    same(engine, client, "SELECT :a AS a, :b AS b, :c AS c, :d AS d, '100%' AS pct",
         {"a": 1, "b": "text", "c": 2.5, "d": None})


def test_statements_without_rows_and_several_statements(engine, client):
    for sql in ("SET application_name = 'columnar-test'", "SELECT 1 AS a; SELECT 'two' AS b", "BEGIN; COMMIT"):
        rows, cols = (run(engine, client, sql, columnar=c) for c in (False, True))
        assert (cols.columns, cols.status, cols.rowcount) == (rows.columns, rows.status, rows.rowcount)
        if rows.columns is not None:
            pd.testing.assert_frame_equal(cols.frame(), rows.frame())


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders (customer_id, amount, created_at) VALUES (1, 1, now())",  # refused by the database
    "SELECT no_such_column FROM orders",
    "SELEC 1",
    "SELECT 1 / (g - 1500) AS boom FROM generate_series(1, 3000) g",  # fails after rows were sent
    "SELECT 'infinity'::timestamp AS t", "SELECT '-infinity'::timestamptz AS t", "SELECT 'infinity'::date AS d",
    ("SELECT g, CASE WHEN g = 1700 THEN 'infinity'::date ELSE date '2024-01-01' END AS d "
     "FROM generate_series(1, 2000) g"),
])
def test_errors_are_the_same(engine, client, sql):
    from sdm_jupyter.errors import SdmClientError

    messages = []
    for columnar in (False, True):
        with pytest.raises(SdmClientError) as info:
            run(engine, client, sql, columnar=columnar, fetch_size=500)
        messages.append((type(info.value).__name__, str(info.value)))
    assert messages[0] == messages[1]
    assert run(engine, client, "SELECT 1 AS still_fine", columnar=True).frame().shape == (1, 1)


def test_one_audited_statement_with_the_cell_tags(engine, client, gw):
    tags = {"sdm_cell": "cell-columnar-7", "sdm_execution_count": 7, "sdm_notebook": "work/fast.ipynb"}
    result = run(engine, client, "SELECT g AS marker_columnar_audit, g::float8 AS x FROM generate_series(1, 1234) g",
                 columnar=True, tags=tags)
    assert result.binary and result.frame().shape == (1234, 2)
    [event] = gw.query_events("marker_columnar_audit", 1)
    time.sleep(0.5)  # nothing else arrives (the describe step is not a statement run)
    assert len(gw.query_events("marker_columnar_audit", 1)) == 1
    assert event["client"]["cell_id"] == "cell-columnar-7" and event["client"]["notebook"] == "work/fast.ipynb"
    assert event["client"]["execution_count"] == 7
    assert event["query"].endswith("/*sdm_cell='cell-columnar-7',sdm_execution_count='7',"
                                   "sdm_notebook='work%2Ffast.ipynb'*/")


# ---- in a real kernel ------------------------------------------------------------------------------


@pytest.fixture
def kernel(gw, kernel_factory):
    k = kernel_factory(gw.kernel_env("analyst", JPY_SESSION_NAME="work/columnar.ipynb"))
    k.ok("%load_ext sdm_jupyter\nimport pandas as pd")
    return k


def test_magic_result_equals_row_path_and_is_attributed(kernel, gw):
    sql = ("SELECT g AS id, g::text AS name, (g * 1.5)::float8 AS amount, "
           "timestamp '2024-01-01' + g * interval '1 second' AS ts, NULLIF(g % 5, 0) AS maybe "
           "FROM generate_series(1, 30000) g")
    r = kernel.ok(f"new = %sdm sql prod {sql} -- marker_magic_columnar", cell_id="cell-fast-1")
    assert "30,000 rows × 5 columns from prod as read-only" in r.stdout
    kernel.ok("%config SdmMagics.columnar = False")
    kernel.ok(f"old = %sdm sql prod {sql} -- marker_magic_rows")
    r = kernel.ok("pd.testing.assert_frame_equal(new, old, check_exact=True)\nprint(dict(new.dtypes))")
    assert "'ts': dtype('<M8[" in r.stdout and "'maybe': dtype('float64')" in r.stdout
    [event] = gw.query_events("marker_magic_columnar", 1)
    assert event["client"]["cell_id"] == "cell-fast-1" and event["client"]["notebook"] == "work/columnar.ipynb"
    deadline = time.monotonic() + 15
    while not (ends := [e for e in gw.events("query.end")
                        if (e.get("details") or {}).get("query_event_id") == event["id"]]):
        assert time.monotonic() < deadline, "no query.end event"
        time.sleep(0.05)
    assert ends[0]["rows"] == 30000 and ends[0]["status"] == "ok"


def test_magic_limit_and_output(kernel):
    r = kernel.ok("%%sdm sql prod -o firsts --limit 5\nSELECT id, amount, created_at FROM orders ORDER BY id")
    assert "first 5 rows (limit 5 reached" in r.stdout
    assert kernel.ok("print(firsts.shape, list(firsts['id']))").stdout.strip() == "(5, 3) [1, 2, 3, 4, 5]"


def _sleepers(db, marker: str) -> int:
    import psycopg

    with psycopg.connect(**db.connect_kwargs("bootstrap"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' "
                            "AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()[0]


def test_interrupt_cancels_a_binary_fetch(kernel, gw):
    # int8 columns only: the binary, column-wise path.
    msg_id = kernel.send("%sdm sql prod SELECT g::int8 AS marker_sleep_binary "
                         "FROM generate_series(1, 3) g, (SELECT pg_sleep(60)) AS s")
    deadline = time.monotonic() + 30
    while _sleepers(gw.db, "marker_sleep_binary") != 1:
        assert time.monotonic() < deadline, "the query never reached the database"
        time.sleep(0.05)
    kernel.km.interrupt_kernel()
    r = kernel.collect(msg_id)
    assert r.status == "error" and r.reply["ename"] == "UsageError" and "query cancelled" in r.reply["evalue"]
    deadline = time.monotonic() + 30
    while _sleepers(gw.db, "marker_sleep_binary") != 0:
        assert time.monotonic() < deadline, "the database did not stop the query"
        time.sleep(0.05)
    assert "1 row" in kernel.ok("%sdm sql prod SELECT 2 AS after_interrupt").stdout


def test_mysql_datasource_still_refused_in_one_line(kernel, gw):
    from sdm_proxy.control import catalog, grants

    catalog.add_datasource(gw.state.cp, gw.state.admin, "mart", type="mysql", host="127.0.0.1", port=3306,
                           database="x")
    from sdm_proxy.vault.secret import SecretValue

    catalog.add_credential(gw.state.cp, gw.state.admin, "mart", "reader", username="r",
                           secret=SecretValue(b"not-used"))
    gw.state.grant("analyst", "mart", "reader", timedelta(minutes=10))
    try:
        r = kernel.run("%sdm sql mart SELECT 1")
        assert r.status == "error" and r.reply["ename"] == "UsageError"
        assert r.reply["evalue"] == ("mart is a mysql datasource: this version of %sdm sql speaks PostgreSQL only")
    finally:
        grants.revoke_grants(gw.state.cp, gw.state.admin, "analyst", "mart", "reader")
        catalog.remove_datasource(gw.state.cp, gw.state.admin, "mart")
