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
    AuditLog,
    CheckpointSigner,
    admin_event,
    canonical_json,
    denied_event,
    query_event,
    session_event,
    unlock_event,
    verify_db,
    verify_jsonl,
)
from sdm_proxy.audit.chain import event_hash
from sdm_proxy.control.db import StateDB, make_engine, upgrade

N = 300
EVERY = 50  # checkpoints at 50, 100, ..., 300


def make_events(n: int) -> list:
    out = []
    for i in range(n):
        user = ("alice", "bob", "carol")[i % 3]
        kind = i % 6
        if kind == 0:
            out.append(session_event("start", user=user, session_id=f"s{i}", client={"addr": "127.0.0.1:1"}))
        elif kind == 1:
            out.append(unlock_event(user=user, session_id=f"s{i}", proxy_id="px", datasource="prod", credential="ro"))
        elif kind == 5:
            out.append(admin_event("root", "grant.create", user=user, credential="ro", hours=2))
        elif kind == 4 and i % 4 == 0:
            out.append(denied_event(user=user, reason="no lease on prod/superuser", datasource="prod"))
        else:
            out.append(query_event(user=user, session_id=f"s{i}", proxy_id="px", datasource="prod", credential="ro",
                                   db_user="ro_login", protocol="postgres", query=f"SELECT {i} -- é",
                                   client={"notebook": "n.ipynb", "cell_id": f"c{i}", "execution_count": i}))  # fmt: skip
    return out


@pytest.fixture
def env(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    signer = CheckpointSigner.load_or_create(tmp_path / "keys" / "audit-signing.pem")
    log = AuditLog(db, jsonl_path=tmp_path / "audit.jsonl", signer=signer, checkpoint_every=EVERY)
    # several batches and single appends, like a gateway under load
    events = make_events(N)
    log.append_many(events[:100])
    for e in events[100:110]:
        log.append(e)
    log.append_many(events[110:])
    yield db, signer, log, tmp_path
    db.dispose()


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


# ---- tampering with the JSON-lines sink ----------------------------------------------------------


def lines_of(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines()


def index_of(lines: list[str], seq: int) -> int:
    for i, line in enumerate(lines):
        doc = json.loads(line)
        if doc["seq"] == seq and doc.get("type") != "audit.checkpoint":
            return i
    raise LookupError(seq)


def f_edit(lines, seq, **changes):
    i = index_of(lines, seq)
    doc = json.loads(lines[i])
    doc.update(changes)
    lines[i] = json.dumps(doc, ensure_ascii=False)


def f_edit_client(lines, seq, **changes):
    client = json.loads(lines[index_of(lines, seq)])["client"]
    f_edit(lines, seq, client={**client, **changes})


def f_delete(lines, seq):
    del lines[index_of(lines, seq)]


def f_swap_content(lines, a, b):
    """Swap everything but the seq numbers (the analogue of swapping rows' bodies and hashes)."""
    ia, ib = index_of(lines, a), index_of(lines, b)
    da, db_ = json.loads(lines[ia]), json.loads(lines[ib])
    da["seq"], db_["seq"] = b, a
    lines[ia], lines[ib] = json.dumps(db_), json.dumps(da)


def f_swap_lines(lines, a, b):
    ia, ib = index_of(lines, a), index_of(lines, b)
    lines[ia], lines[ib] = lines[ib], lines[ia]


JSONL_TAMPERING = {
    "edit body user": (lambda l: f_edit(l, 137, user="mallory"), 137, "hash does not match"),
    "edit body query": (lambda l: f_edit(l, 137, query="SELECT 0"), 137, "hash does not match"),
    "edit nested client": (lambda l: f_edit_client(l, 137, cell_id="zz"), 137, "hash does not match"),
    "edit hash": (lambda l: f_edit(l, 137, hash="f" * 64), 137, "hash"),
    "add a field": (lambda l: f_edit(l, 137, note="x"), 137, "hash does not match"),
    "delete first": (lambda l: f_delete(l, 1), 2, "event 1 missing"),
    "delete middle": (lambda l: f_delete(l, 151), 152, "event 151 missing"),
    "delete last": (lambda l: f_delete(l, N), N, "does not follow"),  # its checkpoint line is left dangling
    "swap two events": (lambda l: f_swap_content(l, 100, 200), 100, "prev_hash"),
    "swap adjacent events": (lambda l: f_swap_content(l, 120, 121), 120, "prev_hash"),
    "swap whole lines": (lambda l: f_swap_lines(l, 120, 121), 121, "event 120 missing"),
    "torn last line": (lambda l: l.__setitem__(slice(-2, None), [l[-2][:40]]), N, "not a JSON object"),
    "edit checkpoint signature": (
        lambda l: l.__setitem__(
            index_of(l, 150) + 1,
            json.dumps({**json.loads(l[index_of(l, 150) + 1]), "signature": "0" * 128}),
        ),
        150,
        "invalid signature",
    ),
}


@pytest.mark.parametrize("name", list(JSONL_TAMPERING))
def test_jsonl_tampering_is_detected_and_located(env, name):
    db, signer, log, tmp = env
    path = tmp / "audit.jsonl"
    lines = lines_of(path)
    tamper, bad_seq, words = JSONL_TAMPERING[name]
    tamper(lines)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    report = verify_jsonl(path, signer.public_key)
    assert not report.ok, name
    assert report.first_bad_seq == bad_seq, report.summary()
    assert words in report.problem, report.summary()
    assert "line " in report.problem  # the problem points at the line in the file


def test_jsonl_trailing_deletion_needs_an_anchor(env):
    """Cutting whole events (with their checkpoint line) off the end leaves a valid, shorter file:
    only the expected head (from the database or another copy) reveals it."""
    db, signer, log, tmp = env
    path = tmp / "audit.jsonl"
    lines = lines_of(path)
    del lines[index_of(lines, N - 1):]  # drop events N-1, N and the checkpoint after N
    path.write_text("\n".join(lines) + "\n")
    assert verify_jsonl(path, signer.public_key).ok
    report = verify_jsonl(path, signer.public_key, expect_head=log.head())
    assert not report.ok and report.first_bad_seq == N - 1 and f"events {N - 1}..{N} missing" in report.problem


def test_jsonl_forged_checkpoint_line_is_detected(env):
    db, signer, log, tmp = env
    path = tmp / "audit.jsonl"
    lines = lines_of(path)
    i = index_of(lines, 100) + 1
    cp = json.loads(lines[i])
    forged = CheckpointSigner.generate().sign(cp["seq"], cp["hash"])
    lines[i] = json.dumps({**cp, "signature": forged})
    path.write_text("\n".join(lines) + "\n")
    report = verify_jsonl(path, signer.public_key)
    assert not report.ok and report.first_bad_seq == 100 and "invalid signature" in report.problem
    assert report.checkpoints == 1
    assert verify_jsonl(path).ok  # no key: signatures are not judged


def test_jsonl_checkpoint_moved_away_from_its_event_is_detected(env):
    db, signer, log, tmp = env
    path = tmp / "audit.jsonl"
    lines = lines_of(path)
    i = index_of(lines, 100) + 1
    cp = lines.pop(i)
    lines.insert(index_of(lines, 103) + 1, cp)
    path.write_text("\n".join(lines) + "\n")
    report = verify_jsonl(path, signer.public_key)
    assert not report.ok and report.first_bad_seq == 100 and "does not follow" in report.problem
