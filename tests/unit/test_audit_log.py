"""AuditLog: appending, the JSON-lines sink, checkpoints, reading back, failing closed, concurrency."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sdm_proxy.audit import (
    GENESIS,
    AuditLog,
    CheckpointSigner,
    Event,
    admin_event,
    denied_event,
    query_event,
    session_event,
    verify_db,
    verify_jsonl,
)
from sdm_proxy.audit import sink as sink_module
from sdm_proxy.audit.chain import event_hash
from sdm_proxy.control.db import StateDB, make_engine, upgrade
from sdm_proxy.errors import AuditUnavailable, StateError


def q(user="alice", text="SELECT 1", **kw) -> Event:
    return query_event(user=user, session_id="s1", proxy_id="px", datasource="prod", credential="ro",
                       db_user="ro_login", protocol="postgres", query=text, **kw)  # fmt: skip


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    yield db
    db.dispose()


@pytest.fixture
def signer(tmp_path):
    return CheckpointSigner.load_or_create(tmp_path / "keys" / "audit-signing.pem")


@pytest.fixture
def log(db, signer, tmp_path):
    return AuditLog(db, jsonl_path=tmp_path / "audit.jsonl", signer=signer, checkpoint_every=10)


def count(tmp_path: Path, table="audit_events") -> int:
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def file_events(path: Path) -> list[dict]:
    return [d for d in map(json.loads, path.read_text().splitlines()) if d.get("type") != "audit.checkpoint"]


def assert_consistent(log: AuditLog, signer, path: Path, n: int) -> None:
    report = verify_db(log.db, signer.public_key)
    assert report.ok and report.events == n, report.summary()
    report = verify_jsonl(path, signer.public_key, expect_head=log.head())
    assert report.ok and report.events == n, report.summary()
    exported = io.StringIO()
    log.export_jsonl(exported)
    assert exported.getvalue() == path.read_text(), "the sink must mirror the database"


# ---- appending -----------------------------------------------------------------------------------


def test_append_fills_seq_and_links_the_chain(log, signer, tmp_path):
    first = log.append(session_event("start", user="alice", session_id="s1"))
    second = log.append(q())
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert second.hash == event_hash(first.hash, json.dumps(
        {k: v for k, v in second.to_dict().items() if k not in ("hash", "seq")},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False))  # fmt: skip
    assert log.head() == (2, second.hash)
    assert_consistent(log, signer, tmp_path / "audit.jsonl", 2)


def test_append_many_is_one_batch_and_the_sink_mirrors_it(log, signer, tmp_path):
    events = log.append_many(q(text=f"SELECT {i}") for i in range(25))
    assert [e.seq for e in events] == list(range(1, 26))
    assert log.append_many([]) == []
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 25 + 2  # checkpoints after 10 and 20
    cp = json.loads(lines[10])
    assert cp == {"type": "audit.checkpoint", "seq": 10, "hash": events[9].hash, "ts": cp["ts"], "signature": cp["signature"]}
    line = json.loads(lines[0])
    assert list(line)[0] == "seq" and list(line)[-1] == "hash"
    assert line == events[0].to_dict()
    assert oct(stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode)) == oct(0o600)
    assert_consistent(log, signer, tmp_path / "audit.jsonl", 25)


def test_invalid_events_are_refused_before_anything_is_written(log, tmp_path):
    with pytest.raises(AuditUnavailable, match="invalid audit event type"):
        log.append_many([q(), Event(type="audit.checkpoint")])
    with pytest.raises(AuditUnavailable):
        log.append(Event(type=None))
    assert count(tmp_path) == 0


def test_tail_filters_and_iter_events(log):
    log.append_many([q("alice"), q("bob"), admin_event("root", "user.add", name="carol"),
                     denied_event(user="bob", reason="no lease"), q("alice", "SELECT 2")])  # fmt: skip
    assert [e.seq for e in log.tail(3)] == [3, 4, 5]
    assert [e.query for e in log.tail(10, user="alice")] == ["SELECT 1", "SELECT 2"]
    assert [e.type for e in log.tail(10, types=["admin.*"])] == ["admin.user.add"]
    assert [e.seq for e in log.tail(10, types=["query", "access.denied"])] == [1, 2, 4, 5]
    assert [e.seq for e in log.tail(1, user="bob", types=["query"])] == [2]
    got = list(log.iter_events())
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert got[2].details == {"name": "carol"} and got[2].hash and got[2].prev_hash == got[1].hash


def test_iter_events_pages_through_long_logs(db, monkeypatch):
    from sdm_proxy.audit import log as log_module

    monkeypatch.setattr(log_module, "READ_CHUNK", 7)
    log = AuditLog(db)
    log.append_many(q(text=str(i)) for i in range(30))
    assert [e.query for e in log.iter_events()] == [str(i) for i in range(30)]


def test_export_jsonl_text_and_binary(log, signer, tmp_path):
    log.append_many(q() for _ in range(12))
    text, binary = io.StringIO(), io.BytesIO()
    assert log.export_jsonl(text) == 12 and log.export_jsonl(binary) == 12
    assert binary.getvalue().decode() == text.getvalue() == (tmp_path / "audit.jsonl").read_text()
    exported = tmp_path / "export.jsonl"
    exported.write_text(text.getvalue())
    assert verify_jsonl(exported, signer.public_key, expect_head=log.head()).ok


def test_log_without_sink_or_signer(db):
    log = AuditLog(db)
    log.append_many(q() for _ in range(5))
    assert verify_db(db, None).ok
    with pytest.raises(StateError, match="signing key"):
        log.checkpoint()


# ---- checkpoints and the signing key -------------------------------------------------------------


def test_checkpoints_every_n_and_on_demand(log, signer, tmp_path):
    assert log.checkpoint() is None  # empty log: nothing to sign
    log.append_many(q() for _ in range(23))
    assert count(tmp_path, "audit_checkpoints") == 2
    cp = log.checkpoint()
    assert (cp.seq, cp.hash) == log.head()
    assert log.checkpoint() == cp  # idempotent: same head, same checkpoint, no second line
    log.append(q())
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(l)["seq"] for l in lines if "audit.checkpoint" in l] == [10, 20, 23]
    assert json.loads(lines[-2])["type"] == "audit.checkpoint"  # on-demand checkpoint follows event 23
    report = verify_db(log.db, signer.public_key)
    assert report.ok and report.checkpoints == 3
    assert_consistent(log, signer, tmp_path / "audit.jsonl", 24)


def test_signing_key_file_is_private_and_stable(tmp_path):
    path = tmp_path / "keys" / "audit-signing.pem"
    a = CheckpointSigner.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = CheckpointSigner.load_or_create(path)
    assert a.public_key_bytes() == b.public_key_bytes() and len(a.public_key_bytes()) == 32
    assert b"PRIVATE" not in a.public_key_pem() and "PRIVATE" not in repr(a)
    path.write_bytes(b"garbage")
    with pytest.raises(StateError, match="unreadable or corrupt"):
        CheckpointSigner.load_or_create(path)


# ---- failing closed ------------------------------------------------------------------------------


def test_unwritable_database_refuses_and_leaves_nothing(log, tmp_path):
    log.append_many(q() for _ in range(3))
    before_head, before_file = log.head(), (tmp_path / "audit.jsonl").read_bytes()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("DROP TABLE audit_events")
    conn.close()
    event = q(text="SELECT secret_plan")
    with pytest.raises(AuditUnavailable) as info:
        log.append(event)
    message = str(info.value)
    assert message.startswith("audit log unavailable: ") and message.endswith("; the action was refused")
    assert "audit_events" in message and "SELECT secret_plan" not in message  # no SQL parameters
    assert info.value.http_status == 503
    assert (event.seq, event.hash, event.prev_hash) == (None, None, None)
    assert log.head() == before_head
    assert (tmp_path / "audit.jsonl").read_bytes() == before_file


def test_failure_late_in_the_transaction_rolls_back_the_whole_batch(db, signer, tmp_path):
    log = AuditLog(db, jsonl_path=tmp_path / "audit.jsonl", signer=signer, checkpoint_every=5)
    log.append_many(q() for _ in range(3))
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("DROP TABLE audit_checkpoints")  # the events insert works, the checkpoint insert fails
    conn.close()
    with pytest.raises(AuditUnavailable, match="audit_checkpoints"):
        log.append_many(q() for _ in range(4))
    assert count(tmp_path) == 3 and log.head()[0] == 3
    assert len(file_events(tmp_path / "audit.jsonl")) == 3


def test_sink_in_a_missing_directory_refuses_before_the_database(db, signer, tmp_path):
    path = tmp_path / "no-such-dir" / "audit.jsonl"
    log = AuditLog(db, jsonl_path=path, signer=signer)
    with pytest.raises(AuditUnavailable, match=r"cannot open the JSON-lines sink .*no-such-dir.*refused"):
        log.append(q())
    assert count(tmp_path) == 0 and not path.exists()


def test_sink_write_failure_after_commit_refuses_then_heals(log, signer, tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    log.append_many(q() for _ in range(4))
    before = path.read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # a torn line hits the disk ...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", half_then_enospc)
    batch = [q(text=f"SELECT {i}") for i in range(8)]
    with pytest.raises(AuditUnavailable, match="No space left on device.*catches up.*refused"):
        log.append_many(batch)
    monkeypatch.setattr(sink_module.os, "write", real_write)
    assert [e.seq for e in batch] == list(range(5, 13))  # committed, so they keep their place
    assert path.read_bytes() == before  # ... and is cut away again: no half-written line remains
    assert count(tmp_path) == 12  # the database (source of truth) has the batch
    log.append(q(text="after"))  # the next append copies the missing events first
    assert [e["query"] for e in file_events(path)][-2:] == ["SELECT 7", "after"]
    assert_consistent(log, signer, path, 13)


def test_torn_last_line_from_a_crash_is_repaired(log, signer, tmp_path):
    path = tmp_path / "audit.jsonl"
    log.append_many(q() for _ in range(3))
    with open(path, "ab") as f:
        f.write(b'{"seq":4,"client":{"addr":nu')  # the process died mid-write
    fresh = AuditLog(log.db, jsonl_path=path, signer=signer, checkpoint_every=10)
    fresh.append(q())
    assert_consistent(fresh, signer, path, 4)


def test_sink_whose_last_line_is_not_an_audit_record_is_refused(log, tmp_path):
    path = tmp_path / "audit.jsonl"
    log.append(q())
    with open(path, "a") as f:
        f.write("hello\n")
    with pytest.raises(AuditUnavailable, match="not an audit record.*refused"):
        AuditLog(log.db, jsonl_path=path).append(q())
    assert count(tmp_path) == 1


def test_sink_enabled_later_is_backfilled_from_the_database(db, signer, tmp_path):
    AuditLog(db, signer=signer, checkpoint_every=10).append_many(q() for _ in range(25))
    path = tmp_path / "audit.jsonl"
    log = AuditLog(db, jsonl_path=path, signer=signer, checkpoint_every=10)
    log.append(q())
    assert len(file_events(path)) == 26
    assert_consistent(log, signer, path, 26)


def test_sink_ahead_of_the_database_is_refused(db, signer, tmp_path):
    other_url = f"sqlite:///{tmp_path}/other.db"
    upgrade(make_engine(other_url, create=True))
    other = StateDB(other_url)
    path = tmp_path / "audit.jsonl"
    AuditLog(other, jsonl_path=path).append_many(q() for _ in range(5))
    log = AuditLog(db, jsonl_path=path, signer=signer)
    with pytest.raises(AuditUnavailable, match="ahead of the database"):
        log.append(q())
    assert count(tmp_path) == 0
    other.dispose()


def test_deleted_head_row_is_refused_not_restarted(log, tmp_path):
    log.append_many(q() for _ in range(3))
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("DELETE FROM audit_head")
    conn.commit()
    conn.close()
    with pytest.raises(AuditUnavailable, match="head row is missing"):
        log.append(q())
    assert count(tmp_path) == 3


# ---- concurrency ---------------------------------------------------------------------------------


def _run_threads(target, n_threads=2):
    errors: list[BaseException] = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_two_threads_sharing_one_log(log, signer, tmp_path):
    _run_threads(lambda i: [log.append(q(user=f"u{i}", text=f"{i}:{k}")) for k in range(500)])
    assert_consistent(log, signer, tmp_path / "audit.jsonl", 1000)
    assert count(tmp_path, "audit_checkpoints") == 100
    seen = [e.query for e in log.iter_events()]
    for i in range(2):  # each writer's events keep their own order
        mine = [s for s in seen if s.startswith(f"{i}:")]
        assert mine == [f"{i}:{k}" for k in range(500)]


def test_two_writers_with_their_own_connections_and_sink_handles(db, signer, tmp_path):
    """Like the gateway and an `sdm` command: separate StateDB engines, separate file handles."""
    path = tmp_path / "audit.jsonl"
    dbs = [StateDB(db.url) for _ in range(2)]
    logs = [AuditLog(d, jsonl_path=path, signer=signer, checkpoint_every=10) for d in dbs]

    def work(i):
        for k in range(250):
            logs[i].append_many([q(user=f"u{i}", text=f"{i}:{k}:a"), q(user=f"u{i}", text=f"{i}:{k}:b")])

    _run_threads(work)
    assert_consistent(logs[0], signer, path, 1000)
    for d in dbs:
        d.dispose()


WORKER = """
import sys
from pathlib import Path
from sdm_proxy.audit import AuditLog, CheckpointSigner, query_event
from sdm_proxy.control.db import StateDB
url, path, key, tag = sys.argv[1:]
log = AuditLog(StateDB(url), jsonl_path=Path(path), signer=CheckpointSigner.load(Path(key)), checkpoint_every=10)
for k in range(150):
    log.append(query_event(user=tag, session_id="s", proxy_id="p", datasource="d", credential="c",
                           db_user="u", protocol="postgres", query=f"{tag}:{k}"))
"""


def test_two_processes_share_the_database_and_the_sink(db, signer, tmp_path):
    path = tmp_path / "audit.jsonl"
    key = tmp_path / "keys" / "audit-signing.pem"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, db.url, str(path), str(key), f"p{i}"],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    log = AuditLog(db, jsonl_path=path, signer=signer, checkpoint_every=10)
    assert_consistent(log, signer, path, 300)
