"""`verify_jsonl`: every kind of tampering with a JSON-lines copy (sink, export or shipped file) is
found and located by line. The database side is in test_audit_verify.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdm_proxy.audit import CheckpointSigner, verify_jsonl
from sdm_proxy.audit.events import canonical_json
from tests.support.audit_chain import N, audit_env


@pytest.fixture
def env(tmp_path):
    with audit_env(tmp_path) as env:
        yield env


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
    lines[i] = canonical_json({**cp, "signature": forged})  # written as the log writes it
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


def test_a_line_rewritten_with_a_duplicate_key_is_detected(env):
    """json.loads keeps the last of two equal keys, so a line carrying the real values last hashes
    as the log wrote it, while a person or a grep reads the first ones: the bytes must match."""
    db, signer, log, tmp = env
    path = tmp / "audit.jsonl"
    lines = lines_of(path)
    i = index_of(lines, 2)
    lines[i] = lines[i].replace('{"seq":2,', '{"seq":2,"user":"mallory","query":"DROP TABLE payroll",', 1)
    path.write_text("\n".join(lines) + "\n")
    report = verify_jsonl(path, signer.public_key)
    assert not report.ok and report.first_bad_seq == 2 and "not as the audit log writes it" in report.problem
