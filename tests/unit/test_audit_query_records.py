"""``QueryRecords`` writes the bodies of ``query`` and ``query.end`` from per-session fragments: they
must be byte for byte what ``query_event``/``query_end_event`` serialised canonically give (the
hash covers these bytes), for any text, and fail the same way where those fail."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdm_proxy.audit import events as ev
from sdm_proxy.audit.body import event_body
from sdm_proxy.audit.query_records import QueryRecords, event_of
from sdm_proxy.audit.spool import AuditSpool
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import sqlite_audit_log
from tests.unit.test_audit_body import NUMBERS, TRICKY_TEXT

IDENTITY = dict(user="alice", session_id="s1", proxy_id="px-1", datasource="db", credential="ro",
                db_user="ro_login", protocol="postgres")


def canonical(e: ev.Event) -> str:
    return json.dumps(e.body_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def expected_query(identity: dict, record: tuple, query, client, details) -> str:
    e = ev.query_event(**identity, query=query, client=client)
    e.id, e.ts, e.details = record[0], record[1], details or None
    return canonical(e)


def expected_end(start: ev.Event, record: tuple, **outcome) -> str:
    e = ev.query_end_event(start, **outcome)
    e.id, e.ts = record[0], record[1]
    return canonical(e)


def check(identity: dict, query, client, details, **outcome) -> None:
    records = QueryRecords(**identity)
    try:
        expected_start = ev.query_event(**identity, query=query, client=client)
        expected_start.details = details or None
        canonical(expected_start)
    except Exception as exc:  # noqa: BLE001 - the fast path must fail the same way
        with pytest.raises(type(exc)):
            records.start(query, client, details)
        return
    started = records.start(query, client, details)
    rec = started.record
    assert rec[2] == "query" and rec[3] == identity["user"]
    assert rec[4] == expected_query(identity, rec, query, client, details)
    assert event_of(rec).body_dict() == {**expected_start.body_dict(), "id": rec[0], "ts": rec[1]}
    start_event = expected_start  # the object the old glue kept, not a round trip of the record
    start_event.id, start_event.ts = rec[0], rec[1]
    try:
        want_end = ev.query_end_event(start_event, **outcome)
        canonical(want_end)
    except Exception as exc:  # noqa: BLE001 - the fast path must fail the same way
        with pytest.raises(type(exc)):
            started.end(**outcome)
        return
    end = started.end(**outcome)
    assert end[2] == "query.end" and end[3] == identity["user"]
    assert end[4] == expected_end(start_event, end, **outcome)


CLIENTS = [None, {"addr": "127.0.0.1:5"},
           {"notebook": "work/q.ipynb", "cell_id": "c-1", "execution_count": 7, "kernel_id": "k", "addr": "[::1]:5"},
           {"notebook": 'a "quoted" \u2028 name', "execution_count": 1.5},
           {"execution_count": True}]  # not text or a number: the general path writes it
DETAILS = [None, {}, {"prepared_statement": "s1"}, {"executes": {"p1": "SELECT 1", "p2": None}},
           {"command": "COM_PING"}]


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_tricky_text_everywhere_matches_the_event_helpers(text):
    identity = {k: text for k in IDENTITY}
    for client in CLIENTS:
        for details in DETAILS:
            check(identity, text, client, details, duration_ms=0.05, rows=1, status="ok", error=None)
    check(IDENTITY, "SELECT 1", None, None, duration_ms=1.25, rows=None, status="error", error=text)


def test_outcomes_match_the_event_helpers_including_their_failures():
    durations = [None, 0, 7, *NUMBERS, -1.0, 2.0004999, math.nan, math.inf, "12.5"]
    for duration in durations:
        for rows in (None, 0, 1, 10**18, -3, True, 2.5):
            check(IDENTITY, "SELECT 1", {"addr": "a"}, None, duration_ms=duration, rows=rows, status="ok", error=None)
    for status in ("ok", "error", "cancelled", "denied", None):
        check(IDENTITY, "SELECT 1", None, None, duration_ms=None, rows=None, status=status, error="x")


def test_identity_that_is_null_or_not_text():
    for key in ("user", "db_user", "session_id", "proxy_id"):
        check({**IDENTITY, key: None}, "SELECT 1", None, None, duration_ms=1.0, rows=1, status="ok", error=None)
    check({**IDENTITY, "datasource": 42}, "SELECT 1", None, None, duration_ms=1.0, rows=1, status="ok", error=None)


ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()))  # lone surrogates too


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(identity=st.fixed_dictionaries({k: st.none() | ANY_TEXT for k in IDENTITY}), query=ANY_TEXT,
       addr=st.none() | ANY_TEXT, cell=st.none() | ANY_TEXT, count=st.none() | st.integers() | st.booleans(),
       details=st.sampled_from(DETAILS), duration=st.none() | st.floats() | st.integers(),
       rows=st.none() | st.integers() | st.booleans(), status=st.none() | ANY_TEXT, error=st.none() | ANY_TEXT,
       command=st.none() | ANY_TEXT)
def test_any_value_matches_the_event_helpers(identity, query, addr, cell, count, details, duration, rows, status,
                                             error, command):
    check(identity, query, {"addr": addr, "cell_id": cell, "execution_count": count}, details,
          duration_ms=duration, rows=rows, status=status, error=error, command=command)


@pytest.mark.parametrize("sync", ["write", "fsync", "commit"])
def test_the_writer_chains_ready_records_in_every_mode(tmp_path, sync):
    records = QueryRecords(**IDENTITY)
    bodies = []

    async def main(log):
        spool = None
        if sync != "commit":
            spool = AuditSpool(tmp_path / "spool")
            spool.open()
        writer = AuditWriter(log, spool=spool, sync=sync, flush_interval=0.001, post_delay=0.001)
        for n in range(3):
            started = records.start(f"SELECT {n}", {"addr": "127.0.0.1:5"})
            await writer.write_records([started.record])
            end = started.end(duration_ms=0.5, rows=n, status="ok")
            writer.post_records([end])
            bodies.extend([started.record[4], end[4]])
        await writer.write_records([])
        await writer.aclose()

    with sqlite_audit_log(tmp_path, checkpoint_every=5) as log:
        asyncio.run(main(log))
        chained = list(log.iter_events())
        assert [(e.type, e.query, e.rows) for e in chained] == [
            ("query", "SELECT 0", None), ("query.end", None, 0), ("query", "SELECT 1", None),
            ("query.end", None, 1), ("query", "SELECT 2", None), ("query.end", None, 2)]
        assert all(chained[i + 1].details == {"query_event_id": chained[i].id} for i in (0, 2, 4))
        for e, body in zip(chained, bodies):  # what was chained is byte for byte what was recorded
            e.prev_hash = None
            assert event_body(e) == body
        from sdm_proxy.audit import verify_db

        assert verify_db(log.db, log.signer.public_key).ok
