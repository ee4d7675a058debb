"""`verify_db` finds an event chained twice. The hashes cannot: the second copy links correctly.
``audit_events.id`` has no unique index (schema 0002), so verify is what would notice."""

from __future__ import annotations

import pytest
from sdm_proxy.audit import verify_db
from sdm_proxy.audit.events import query_event
from sdm_proxy.audit.records import records_of

from tests.support.audit_log import sqlite_audit_log


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}", client={"addr": "127.0.0.1:5"})


@pytest.fixture
def audit_log(tmp_path):
    with sqlite_audit_log(tmp_path, checkpoint_every=4) as log:
        yield log


def test_unique_ids_verify(audit_log):
    audit_log.append_spooled(records_of([q(n) for n in range(10)]))
    report = verify_db(audit_log.db, audit_log.signer.public_key)
    assert report.ok and report.events == 10, report.summary()


def test_a_record_chained_twice_is_reported_at_its_second_copy(audit_log):
    events = [q(n) for n in range(10)]
    audit_log.append_spooled(records_of(events))
    audit_log.append_spooled(records_of([q(10)]))
    audit_log.append_spooled(records_of(events[3:5]))  # as a recovery that missed them would: seq 12, 13
    report = verify_db(audit_log.db, audit_log.signer.public_key)
    assert not report.ok
    assert (report.first_bad_seq, report.first_bad_id) == (12, events[3].id)
    assert "event 12 repeats event 4" in report.problem and "chained twice" in report.problem


def test_a_shipped_copy_with_a_record_chained_twice_is_reported_too(audit_log, tmp_path):
    """`sdm audit verify --file`: the JSON-lines copy holds the same duplicate, found with the ids
    kept on disk rather than in memory."""
    from sdm_proxy.audit import verify_jsonl

    events = [q(n) for n in range(10)]
    audit_log.append_spooled(records_of(events))
    audit_log.append_spooled(records_of([q(10)]))
    assert verify_jsonl(tmp_path / "audit.jsonl", audit_log.signer.public_key).ok
    audit_log.append_spooled(records_of(events[3:5]))
    report = verify_jsonl(tmp_path / "audit.jsonl", audit_log.signer.public_key)
    assert not report.ok
    assert (report.first_bad_seq, report.first_bad_id) == (12, events[3].id)
    assert "event 12 repeats event 4" in report.problem and "chained twice" in report.problem
    db = verify_db(audit_log.db, audit_log.signer.public_key)
    assert (report.events, report.checkpoints) == (db.events, db.checkpoints) == (11, 2)  # below seq 12


def test_the_first_repeat_is_reported_even_when_an_earlier_id_repeats_later(audit_log, tmp_path):
    """Ids A@1, B@2, B@3, A@4: the first event that repeats another is seq 3 (B), not seq 4 (A)."""
    from sdm_proxy.audit import verify_jsonl

    a, b = q(1), q(2)
    audit_log.append_spooled(records_of([a, b]))
    audit_log.append_spooled(records_of([b]))
    audit_log.append_spooled(records_of([a]))
    for report in (verify_db(audit_log.db, audit_log.signer.public_key),
                   verify_jsonl(tmp_path / "audit.jsonl", audit_log.signer.public_key)):
        assert (report.first_bad_seq, report.first_bad_id) == (3, b.id), report.summary()
        assert "event 3 repeats event 2" in report.problem and report.events == 2
