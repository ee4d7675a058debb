"""Other drivers through the gateway: asyncpg (extended protocol, binary, COPY), SQLAlchemy 2, pandas."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.wire.stack import DATASOURCE

pytestmark = pytest.mark.postgres

asyncpg = pytest.importorskip("asyncpg")


def _asyncpg_kwargs(gateway, user="ann", credential="read-only", **extra):
    return {"host": gateway.host, "port": gateway.port, "user": credential, "database": DATASOURCE,
            "password": gateway.tokens[user], "ssl": False, **extra}


def test_asyncpg_extended_binary_prepared_and_copy(gateway):
    marker = f"apg_{time.monotonic_ns()}"

    async def main():
        conn = await asyncpg.connect(**_asyncpg_kwargs(gateway, "bob", "superuser"))
        try:
            user = await conn.fetchval("SELECT current_user")
            rows = await conn.fetch(f"SELECT id, amount, created_at FROM orders WHERE id <= $1 /* {marker} */", 10)
            stmt = await conn.prepare(f"SELECT $1::int8 * 2 AS {marker}_prep")
            doubled = [await stmt.fetchval(i) for i in range(3)]
            await conn.execute(f"CREATE TEMP TABLE {marker} (id int, payload bytea)")
            await conn.copy_records_to_table(marker, records=[(i, bytes([i % 256]) * 100) for i in range(1000)])
            count = await conn.fetchval(f"SELECT count(*) FROM {marker}")
            out = []

            async def sink(chunk):
                out.append(chunk)

            await conn.copy_from_query(f"SELECT id FROM {marker} ORDER BY id", output=sink)
            async with conn.transaction():
                await conn.executemany(f"INSERT INTO {marker} VALUES ($1, $2)", [(i, b"x") for i in range(50)])
            return user, rows, doubled, count, b"".join(out)
        finally:
            await conn.close()

    user, rows, doubled, count, copied = asyncio.run(main())
    assert user == gateway.pg.logins["superuser"].username
    assert [r["id"] for r in rows] == list(range(1, 11)) and rows[0]["created_at"].year == 2024
    assert doubled == [0, 2, 4] and count == 1000
    assert copied.decode().splitlines() == [str(i) for i in range(1000)]
    starts = gateway.query_events(marker)
    assert any(f"WHERE id <= $1 /* {marker} */" in e["query"] for e in starts)
    prep = [e for e in starts if f"{marker}_prep" in e["query"]]
    assert len(prep) == 3, "each execution of the prepared statement is audited"
    assert [gateway.outcome(e)["rows"] for e in prep] == [1, 1, 1]
    inserts = [e for e in starts if e["query"].startswith(f"INSERT INTO {marker}")]
    assert len(inserts) == 50


def test_asyncpg_login_errors_carry_the_sqlstate(gateway):
    async def attempt(**kw):
        try:
            await asyncpg.connect(**kw)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, str(exc)
        raise AssertionError("login unexpectedly succeeded")

    state, _ = asyncio.run(attempt(**_asyncpg_kwargs(gateway, password="sdms.nope")))
    assert state == "28P01"
    state, message = asyncio.run(attempt(**_asyncpg_kwargs(gateway, "carl", "read-only")))
    assert state == "28000" and "carl" in message


def test_asyncpg_timeout_cancels_the_query(gateway):
    async def main():
        conn = await asyncpg.connect(**_asyncpg_kwargs(gateway))
        try:
            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch("SELECT pg_sleep(30) /* asyncpg-timeout */", timeout=0.5)
            elapsed = time.monotonic() - start
            return elapsed, await conn.fetchval("SELECT 'usable'")
        finally:
            await conn.close()

    elapsed, after = asyncio.run(main())
    assert after == "usable" and elapsed < 2.5, f"cancel took {elapsed:.2f}s"
    end = gateway.outcome(gateway.query_events("asyncpg-timeout")[-1])
    assert end["status"] == "cancelled"


def _engine(gateway, user="ann", credential="read-only"):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    url = sqlalchemy.URL.create("postgresql+psycopg", username=credential, password=gateway.tokens[user],
                                host=gateway.host, port=gateway.port, database=DATASOURCE,
                                query={"sslmode": "disable"})
    return sqlalchemy.create_engine(url)


def test_sqlalchemy_2(gateway):
    from sqlalchemy import text

    engine = _engine(gateway)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == gateway.pg.logins["read-only"].username
            rows = conn.execute(text("SELECT id FROM customers WHERE country = :c ORDER BY id"), {"c": "DE"}).all()
            assert len(rows) == 25
    finally:
        engine.dispose()
    assert gateway.query_events("SELECT id FROM customers WHERE country = $1 ORDER BY id")


def test_pandas_read_sql(gateway):
    pd = pytest.importorskip("pandas")
    engine = _engine(gateway)
    try:
        tag = "/*sdm_cell='pandas-cell',sdm_notebook='pandas.ipynb'*/"
        frame = pd.read_sql(f"SELECT id, amount, created_at FROM orders ORDER BY id {tag}", engine)
    finally:
        engine.dispose()
    assert len(frame) == 600 and list(frame.columns) == ["id", "amount", "created_at"]
    (event,) = [e for e in gateway.query_events("pandas-cell")]
    assert event["client"]["cell_id"] == "pandas-cell" and event["client"]["notebook"] == "pandas.ipynb"
    assert gateway.outcome(event)["rows"] == 600
