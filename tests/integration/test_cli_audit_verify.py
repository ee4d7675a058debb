"""`sdm audit verify` passes on an untouched log and names the first bad event after tampering.

Issue 2, "Done when": "`sdm audit verify` passes on an untouched log, and names the first bad event
after any single row of the log is edited, deleted, or swapped with another." Each tampering is
done with plain sqlite3 (or a text edit of the JSON-lines sink) on a fresh copy of one home that an
admin session produced through the real CLI; `sdm audit verify` runs as a subprocess.

Report format (proxy/sdm_proxy/audit/verify.py, ``VerifyReport.summary``):
  ok:   "audit log OK: N events, K signed checkpoints verified"            (exit 0)
  bad:  "audit log FAILED verification: <problem> (first bad event: seq S[, id I]; ...)"  (exit 1)
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.support.cli import copy_home, run_many, scripted_home

FIRST_BAD = re.compile(r"first bad event: seq (\d+)")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The scripted admin session (12 events) plus a rotation, a grant revoke and a session revoke."""
    scripted = scripted_home(tmp_path_factory)
    path = copy_home(scripted.path, tmp_path_factory.mktemp("audit-verify") / "home")
    for res in run_many([
        ((path, "credential", "rotate", "prod-db", "read-only", "--password-stdin"), {"stdin": "rotated-pw\n"}),
        ((path, "grant", "revoke", "ann", "prod-db", "superuser"), {}),
        ((path, "session", "revoke", scripted.ann_session["id"]), {}),
    ]):
        assert res.rc == 0, res.describe()
    assert [e["seq"] for e in events(path)] == list(range(1, 17))  # + admin.session.revoke
    return path


def events(home: Path) -> list[dict]:
    con = sqlite3.connect(str(home / "state.db"))
    try:
        rows = con.execute("SELECT seq, id, type, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        con.close()
    return [{"seq": s, "id": i, "type": t, "body": b, "hash": h} for s, i, t, b, h in rows]


def execute(home: Path, *statements: tuple[str, tuple]) -> None:
    con = sqlite3.connect(str(home / "state.db"))
    try:
        with con:
            for sql, params in statements:
                assert con.execute(sql, params).rowcount == 1, sql
    finally:
        con.close()


def first_bad(res) -> int:
    match = FIRST_BAD.search(res.stdout + res.stderr)
    assert match, f"the report names no first bad event\n{res.describe()}"
    return int(match.group(1))


def test_untouched_log_verifies(home):
    db, jsonl = run_many([((home, "audit", "verify"), {}),
                          ((home, "audit", "verify", "--file", str(home / "audit.jsonl")), {})])
    n = len(events(home))
    assert n >= 15
    for res in (db, jsonl):
        assert res.rc == 0, res.describe()
        assert "Traceback" not in res.stderr
        assert res.stdout.startswith(f"audit log OK: {n} events"), res.describe()


# ---- one tampering per fresh copy --------------------------------------------------------------

def edit_body(home: Path, seq: int) -> None:
    """Change one field inside a stored event (the body stays canonical JSON, the hash is kept)."""
    ev = next(e for e in events(home) if e["seq"] == seq)
    assert '"credential":"read-only"' in ev["body"], ev
    execute(home, ("UPDATE audit_events SET body = ? WHERE seq = ?",
                   (ev["body"].replace('"credential":"read-only"', '"credential":"superuser"'), seq)))


def delete_row(home: Path, seq: int) -> None:
    execute(home, ("DELETE FROM audit_events WHERE seq = ?", (seq,)))


def swap_rows(home: Path, a: int, b: int) -> None:
    """Swap two events' body, hash and id (the seq and prev_hash columns stay where they were)."""
    ea, eb = (next(e for e in events(home) if e["seq"] == s) for s in (a, b))
    execute(home,
            ("UPDATE audit_events SET id = ? WHERE seq = ?", ("swap-tmp", a)),  # id is UNIQUE
            ("UPDATE audit_events SET body = ?, hash = ?, id = ? WHERE seq = ?", (ea["body"], ea["hash"], ea["id"], b)),
            ("UPDATE audit_events SET body = ?, hash = ?, id = ? WHERE seq = ?", (eb["body"], eb["hash"], eb["id"], a)))


def last_seq(home: Path) -> int:
    return events(home)[-1]["seq"]


# (id, tamper(home), expected first bad seq(home before tampering), words the problem must contain)
LEASE_SEQ = 7  # admin.role.lease of prod-db/read-only in the scripted session
TAMPERS = [
    ("edit-body", lambda h: edit_body(h, LEASE_SEQ), lambda h: LEASE_SEQ, "hash does not match"),
    ("delete-middle", lambda h: delete_row(h, 8), lambda h: 9, "event 8 missing"),
    ("delete-last", lambda h: delete_row(h, last_seq(h)), lambda h: last_seq(h), "missing"),
    ("swap-two", lambda h: swap_rows(h, 5, 10), lambda h: 5, "event 5"),
]


@pytest.fixture(scope="module")
def tampered(home, tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    prepared = {}
    for tid, tamper, expect, words in TAMPERS:
        copy = copy_home(home, root / tid)
        expected = expect(copy)
        tamper(copy)
        prepared[tid] = (copy, expected, words)
    results = run_many(((copy, "audit", "verify"), {}) for copy, _, _ in prepared.values())
    return {tid: (res, *prepared[tid][1:]) for tid, res in zip(prepared, results)}


@pytest.mark.parametrize("tid", [t[0] for t in TAMPERS])
def test_tampered_log_fails_naming_the_first_bad_event(tampered, tid):
    res, expected_seq, words = tampered[tid]
    assert res.rc == 1, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    assert "FAILED" in res.stdout, res.describe()
    assert first_bad(res) == expected_seq, res.describe()
    assert words in res.stdout, res.describe()


def test_delete_last_row_names_it(tampered, home):
    res, expected_seq, _ = tampered["delete-last"]
    assert expected_seq == last_seq(home)
    assert f"event {expected_seq} missing" in res.stdout, res.describe()


def test_swap_names_the_id_now_at_that_seq(tampered, home):
    """After a swap the event at seq 5 is really event 10: the report names the seq and that id."""
    res, _, _ = tampered["swap-two"]
    moved_id = next(e["id"] for e in events(home) if e["seq"] == 10)
    assert f"seq 5, id {moved_id}" in res.stdout, res.describe()


def test_edited_jsonl_line_names_that_event(home, tmp_path):
    copy = copy_home(home, tmp_path / "home")
    path = copy / "audit.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    target = 6
    [index] = [i for i, line in enumerate(lines) if json.loads(line).get("seq") == target]
    assert '"target":"analysts"' in lines[index]
    lines[index] = lines[index].replace('"target":"analysts"', '"target":"auditors"')
    path.write_text("".join(lines))
    res, db = run_many([((copy, "audit", "verify", "--file", str(path)), {}),
                        ((copy, "audit", "verify"), {})])
    assert res.rc == 1, res.describe()
    assert "Traceback" not in res.stderr
    assert first_bad(res) == target, res.describe()
    assert f"line {index + 1}" in res.stdout, res.describe()
    # the state database itself was not touched and still verifies
    assert db.rc == 0 and "audit log OK" in db.stdout, db.describe()


def test_json_report_for_scripts(home, tmp_path):
    """`--json`: the report as one object (what GET /v1/admin/audit/verify gives), same exit code."""
    from tests.support.cli import sdm

    good = sdm(home, "audit", "verify", "--json")
    assert good.rc == 0, good.describe()
    assert json.loads(good.stdout) == {"ok": True, "events": len(events(home)), "checkpoints": 0,
                                       "first_bad_seq": None, "first_bad_id": None, "problem": None}
    bad_home = copy_home(home, tmp_path / "home")
    edit_body(bad_home, LEASE_SEQ)
    bad = sdm(bad_home, "audit", "verify", "--json")
    report = json.loads(bad.stdout)
    assert bad.rc == 1 and report["ok"] is False, bad.describe()
    assert report["first_bad_seq"] == LEASE_SEQ and "hash does not match" in report["problem"]
