"""`verify_db` / `verify_jsonl`: a valid chain passes; every kind of tampering is found and located.

The state DB is a real SQLite file; tampering goes through the ``sqlite3`` module directly, the way
someone with access to the file (not to our code) would do it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sdm_proxy.audit import (
    CheckpointSigner,
    canonical_json,
    verify_db,
    verify_jsonl,
)
from sdm_proxy.audit.chain import event_hash
from sdm_proxy.control.db import StateDB, make_engine, upgrade
from tests.support.audit_chain import EVERY, N, audit_env


@pytest.fixture
def env(tmp_path):
    with audit_env(tmp_path) as env:
        yield env


def raw(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    return conn


COLS = "id, ts, type, user, body, prev_hash, hash"


def row(conn, seq):
    return conn.execute(f"SELECT {COLS} FROM audit_events WHERE seq = ?", (seq,)).fetchone()


def set_row(conn, seq, values):
    conn.execute(f"UPDATE audit_events SET ({COLS}) = (?, ?, ?, ?, ?, ?, ?) WHERE seq = ?", (*values, seq))


def edit_body(conn, seq, **changes):
    (body,) = conn.execute("SELECT body FROM audit_events WHERE seq = ?", (seq,)).fetchone()
    doc = json.loads(body)
    doc.update(changes)
    conn.execute("UPDATE audit_events SET body = ? WHERE seq = ?", (canonical_json(doc), seq))


def swap(conn, a, b):
    ra, rb = row(conn, a), row(conn, b)
    conn.execute("UPDATE audit_events SET id = 'tmp' WHERE seq = ?", (a,))
    set_row(conn, b, ra)
    set_row(conn, a, rb)


# ---- a valid chain -------------------------------------------------------------------------------


def test_valid_chain_verifies_in_db_and_jsonl(env):
    db, signer, log, tmp = env
    report = verify_db(db, signer.public_key, expect_checkpoint_every=EVERY)
    assert report.ok, report.summary()
    assert (report.events, report.checkpoints) == (N, N // EVERY)
    assert report.first_bad_seq is None and report.problem is None
    assert report.summary() == f"audit log OK: {N} events, {N // EVERY} signed checkpoints verified"
    file_report = verify_jsonl(tmp / "audit.jsonl", signer.public_key_pem(), expect_head=log.head())
    assert file_report.ok, file_report.summary()
    assert (file_report.events, file_report.checkpoints) == (N, N // EVERY)
    # also accepted: raw public key bytes, the private key file's path, or no key at all
    assert verify_db(db, signer.public_key_bytes()).ok
    assert verify_db(db, tmp / "keys" / "audit-signing.pem").ok
    assert verify_jsonl(tmp / "audit.jsonl").ok


def test_empty_log_verifies(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    report = verify_db(db, None)
    assert report.ok and report.events == 0
    (tmp_path / "a.jsonl").write_text("")
    assert verify_jsonl(tmp_path / "a.jsonl").ok


# ---- tampering with the database -----------------------------------------------------------------


def _renumber_after_delete(conn):
    conn.execute("DELETE FROM audit_events WHERE seq = 150")
    conn.execute("UPDATE audit_events SET seq = seq - 1 WHERE seq > 150")


DB_TAMPERING = {
    # name: (tamper(conn), first bad seq, words in the problem)
    "edit body user": (lambda c: edit_body(c, 137, user="mallory"), 137, "hash does not match"),
    "edit body query": (lambda c: edit_body(c, 137, query="SELECT harmless"), 137, "hash does not match"),
    "edit body client": (lambda c: edit_body(c, 137, client=None), 137, "hash does not match"),
    "edit body bytes": (
        lambda c: c.execute("UPDATE audit_events SET body = replace(body, 'SELECT', 'select') WHERE seq = 141"),
        141,
        "hash does not match",
    ),
    "edit hash": (lambda c: c.execute("UPDATE audit_events SET hash = ? WHERE seq = 137", ("0" * 64,)), 137, "hash"),
    "edit prev_hash": (
        lambda c: c.execute("UPDATE audit_events SET prev_hash = ? WHERE seq = 137", ("1" * 64,)), 137, "prev_hash"
    ),
    "edit user column": (
        lambda c: c.execute("UPDATE audit_events SET user = 'mallory' WHERE seq = 137"), 137, "user column"
    ),
    "edit type column": (
        lambda c: c.execute("UPDATE audit_events SET type = 'session.end' WHERE seq = 137"), 137, "type column"
    ),
    "edit ts column": (
        lambda c: c.execute("UPDATE audit_events SET ts = '2000-01-01T00:00:00.000000Z' WHERE seq = 137"),
        137,
        "ts column",
    ),
    "delete first": (lambda c: c.execute("DELETE FROM audit_events WHERE seq = 1"), 2, "event 1 missing"),
    "delete middle": (lambda c: c.execute("DELETE FROM audit_events WHERE seq = 150"), 151, "event 150 missing"),
    "delete range": (
        lambda c: c.execute("DELETE FROM audit_events WHERE seq BETWEEN 150 AND 152"), 153, "events 150..152 missing"
    ),
    "delete last": (lambda c: c.execute("DELETE FROM audit_events WHERE seq = ?", (N,)), N, f"event {N} missing"),
    "delete middle and renumber": (_renumber_after_delete, 150, "prev_hash"),
    "swap two rows": (lambda c: swap(c, 100, 200), 100, "prev_hash"),
    "swap adjacent rows": (lambda c: swap(c, 120, 121), 120, "prev_hash"),
}


@pytest.mark.parametrize("name", list(DB_TAMPERING))
def test_db_tampering_is_detected_and_located(env, name):
    db, signer, log, tmp = env
    tamper, bad_seq, words = DB_TAMPERING[name]
    conn = raw(tmp)
    expected_id = (row(conn, bad_seq) or (None,))[0]
    tamper(conn)
    if name.startswith("swap"):
        expected_id = row(conn, bad_seq)[0]
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok
    assert report.first_bad_seq == bad_seq, report.summary()
    assert words in report.problem, report.summary()
    if name not in ("delete last",) and not name.startswith("delete middle and"):
        assert report.first_bad_id == expected_id
    assert report.events == bad_seq - 1 if not name.startswith("delete") else report.events <= bad_seq
    assert "FAILED" in report.summary() and f"seq {bad_seq}" in report.summary()


def test_deleted_last_event_with_the_head_moved_back_is_caught_by_the_sink(env):
    """Honest limit: trailing deletion plus a fixed-up head row only shows against the off-box copy."""
    db, signer, log, tmp = env
    conn = raw(tmp)
    conn.execute("DELETE FROM audit_events WHERE seq = ?", (N,))
    prev = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (N - 1,)).fetchone()[0]
    conn.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (N,))
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (N - 1, prev))
    conn.close()
    assert verify_db(db, signer.public_key, expect_checkpoint_every=EVERY).ok
    # ... but the off-box copy still has it
    report = verify_jsonl(tmp / "audit.jsonl", signer.public_key, expect_head=log.head())
    assert not report.ok and report.first_bad_seq == N and "after the expected head" in report.problem


def test_missing_head_row_is_reported(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    conn.execute("DELETE FROM audit_head")
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and "head row is missing" in report.problem


def test_rows_added_behind_the_logs_back_are_reported(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    last = row(conn, N)
    doc = json.loads(last[4])
    doc.update(id="3b7d1d7e-0000-4000-8000-000000000000", prev_hash=last[6], user="mallory")
    body = canonical_json(doc)
    conn.execute(
        f"INSERT INTO audit_events (seq, {COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (N + 1, doc["id"], doc["ts"], doc["type"], doc["user"], body, last[6], event_hash(last[6], body)),
    )
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and report.first_bad_seq == N + 1 and "outside the audit log" in report.problem


def test_rows_stored_below_seq_1_are_reported_and_never_shown(env):
    """The walk starts at seq 1: a made-up event at seq -7 was in no chain, passed verify, and was
    shown by `tail` and by a user's activity."""
    db, signer, log, tmp = env
    conn = raw(tmp)
    first = row(conn, 1)
    doc = json.loads(first[4])
    doc.update(id="3b7d1d7e-0000-4000-8000-00000000000f", user="bob", query="DROP TABLE payroll")
    body = canonical_json(doc)
    conn.execute(f"INSERT INTO audit_events (seq, {COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (-7, doc["id"], doc["ts"], doc["type"], "bob", body, "0" * 64, event_hash("0" * 64, body)))
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and "seq 0 or below" in report.problem
    assert not [e for e in log.tail(10_000, user="bob") if e.query == "DROP TABLE payroll"]


def test_chain_rewritten_with_recomputed_hashes_is_caught_by_a_checkpoint(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    edit_body(conn, 260, user="mallory")
    prev = row(conn, 259)[6]
    for seq in range(260, N + 1):
        body = json.loads(row(conn, seq)[4])
        body["prev_hash"] = prev
        text = canonical_json(body)
        h = event_hash(prev, text)
        conn.execute("UPDATE audit_events SET body = ?, prev_hash = ?, hash = ?, user = ? WHERE seq = ?",
                     (text, prev, h, body["user"], seq))  # fmt: skip
        prev = h
    conn.execute("UPDATE audit_head SET hash = ?", (prev,))
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok
    assert report.first_bad_seq == 300 and "rewritten" in report.problem


# ---- checkpoints ---------------------------------------------------------------------------------


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] != "1" else "2") + hex_text[1:]


def test_altered_checkpoint_signature_is_detected(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    (sig,) = conn.execute("SELECT signature FROM audit_checkpoints WHERE seq = 150").fetchone()
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = 150", (_flip(sig),))
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and report.first_bad_seq == 150 and "invalid signature" in report.problem
    assert report.checkpoints == 2  # 50 and 100 verified before it
    # without a key the signature cannot be judged, the hash link still is
    assert verify_db(db, None).ok


def test_checkpoint_forged_with_another_key_is_detected(env):
    db, signer, log, tmp = env
    forger = CheckpointSigner.generate()
    conn = raw(tmp)
    (h,) = conn.execute("SELECT hash FROM audit_events WHERE seq = 150").fetchone()
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = 150", (forger.sign(150, h),))
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and report.first_bad_seq == 150 and "invalid signature" in report.problem
    # and verifying with the wrong public key fails at the first checkpoint
    assert verify_db(db, forger.public_key).first_bad_seq == 50


def test_checkpoint_hash_altered_is_detected(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    fake = "ab" * 32
    conn.execute("UPDATE audit_checkpoints SET hash = ?, signature = ? WHERE seq = 100",
                 (fake, CheckpointSigner.generate().sign(100, fake)))  # fmt: skip
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and report.first_bad_seq == 100 and "does not match" in report.problem


def test_checkpoint_for_a_nonexistent_event_and_missing_checkpoint(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    cp = signer.checkpoint(N + 5, "cd" * 32)
    conn.execute("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?)", (cp.seq, cp.hash, cp.ts, cp.signature))
    conn.close()
    report = verify_db(db, signer.public_key)
    assert not report.ok and report.first_bad_seq == N + 5 and "does not exist" in report.problem
    conn = raw(tmp)
    conn.execute("DELETE FROM audit_checkpoints WHERE seq >= 150")
    conn.close()
    assert verify_db(db, signer.public_key).ok
    report = verify_db(db, signer.public_key, expect_checkpoint_every=EVERY)
    assert not report.ok and report.first_bad_seq == 150 and "missing" in report.problem


def test_earliest_problem_wins_between_chain_and_checkpoints(env):
    db, signer, log, tmp = env
    conn = raw(tmp)
    (sig,) = conn.execute("SELECT signature FROM audit_checkpoints WHERE seq = 50").fetchone()
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = 50", (_flip(sig),))
    edit_body(conn, 120, user="x")
    conn.close()
    assert verify_db(db, signer.public_key).first_bad_seq == 50
