"""Hardening of the PostgreSQL wire proxy: bounded tag parsing, name limits, statement size, startup
parameters, non-UTF-8 logins, failing policy checks, SCRAM work and login notices."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from types import SimpleNamespace

import psycopg
import pytest
from sdm_proxy.unlock.client import DatasourceInfo, UnlockedCredential
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire import sqlcomment
from sdm_proxy.wire.postgres import scram, upstream
from sdm_proxy.wire.postgres.errors import UpstreamLoginError
from sdm_proxy.wire.postgres.session import QUERY_TEXT_LIMIT, Session, _Close
from sdm_proxy.wire.postgres.tracker import (
    MAX_TRACKED_NAMES,
    UNKNOWN_TEXT,
    StatementTracker,
)
from sdm_proxy.wire.sqlcomment import parse_tags

from tests.wire import pgraw

P, B, E, S, D, C = (ord(c) for c in "PBESDC")


# ---- 1. sqlcomment: linear, bounded ---------------------------------------------------------------


class _CountingStr(str):
    """A str that counts how many characters the parser slices out of it (its whole-input work)."""

    sliced = 0

    def __getitem__(self, key):
        out = str.__getitem__(self, key)
        _CountingStr.sliced += len(out)
        return out


@pytest.mark.parametrize("hostile", [
    "/*sdm_" + "a" * (1 << 20) + "*/",
    "/*sdm_" * (1 << 18),
    "SELECT 1 /*sdm_cell='" + "\\" * (1 << 20) + "*/",
    "/*sdm_cell='x'," * (1 << 16) + "*/",
])
def test_hostile_tag_comment_parses_from_a_bounded_tail(hostile):
    _CountingStr.sliced = 0
    parse_tags(_CountingStr(hostile))  # completes (the regex version took minutes on 1 MiB)
    assert _CountingStr.sliced <= sqlcomment.TAIL  # only the tail of the input is ever touched


def test_tags_still_parse_after_a_large_statement():
    sql = "SELECT '" + "x" * (1 << 20) + "' /*sdm_cell='c%201',sdm_execution_count='3'*/"
    assert parse_tags(sql) == {"cell_id": "c 1", "execution_count": 3}


# ---- 2. statement/portal names -----------------------------------------------------------------------


def _cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def test_names_longer_than_63_bytes_are_refused():
    t = StatementTracker()
    ok, long = "s" * 63, "s" * 64
    assert t.check_names(P, _cstr(ok) + _cstr("SELECT 1") + b"\0\0") is None
    assert t.check_names(P, _cstr(long) + _cstr("SELECT 1") + b"\0\0") is not None
    assert t.check_names(P, _cstr("é" * 32) + _cstr("SELECT 1") + b"\0\0") is not None  # 64 bytes
    assert t.check_names(B, _cstr(long) + _cstr("") + b"\0" * 6) is not None
    assert t.check_names(B, _cstr("") + _cstr(long) + b"\0" * 6) is not None
    assert t.check_names(E, _cstr(long) + b"\0" * 4) is not None
    assert t.check_names(D, b"S" + _cstr(long)) is not None
    assert t.check_names(C, b"P" + _cstr(long)) is not None
    assert t.check_names(D, b"S" + _cstr(ok)) is None


def test_tracked_names_are_capped():
    t = StatementTracker()
    for i in range(MAX_TRACKED_NAMES):
        t._stmts.text[f"s{i}"] = "SELECT 1"
    assert t.check_names(P, _cstr("s1") + _cstr("SELECT 2") + b"\0\0") is None  # redefining is fine
    assert t.check_names(P, _cstr("") + _cstr("SELECT 2") + b"\0\0") is None  # unnamed is fine
    assert "too many" in t.check_names(P, _cstr("new") + _cstr("SELECT 2") + b"\0\0")


def test_tracked_statement_text_has_a_budget(monkeypatch):
    """Review: 10,000 names of up to 1 MiB each could hold 10 GiB in the gateway (300 named
    statements took 300 MB). The texts held as prepared statements are counted."""
    from sdm_proxy.wire.postgres import tracker_client

    monkeypatch.setattr(tracker_client, "MAX_TRACKED_TEXT", 1000)
    t = StatementTracker()
    big = "SELECT '" + "x" * 400 + "'"

    def parse(name):
        return _cstr(name) + _cstr(big) + b"\0\0"

    def prepare(name):
        t.on_client(P, parse(name))
        t.on_client(S, b"")
        for mtype in (ord("1"), ord("Z")):
            t.on_server(mtype, b"I" if mtype == ord("Z") else b"")

    for name in ("a", "b"):
        assert t.check_names(P, parse(name)) is None
        prepare(name)
    assert t._parse_chars == 0 and t._stmts.text.size == 2 * len(big)
    refused = t.check_names(P, parse("c"))
    assert "too much prepared statement text" in refused and refused.sqlstate == "54000"
    t.on_client(C, b"S" + _cstr("a"))
    t.on_client(S, b"")
    for mtype in (ord("3"), ord("Z")):
        t.on_server(mtype, b"I" if mtype == ord("Z") else b"")
    assert t._stmts.text.size == len(big)
    assert t.check_names(P, parse("c")) is None  # room again after the Close


def test_parse_text_in_flight_counts_against_the_budget(monkeypatch):
    """Unnamed Parses replace each other in the tracker, but each one's text is held until its
    answer comes: a client sending them without reading is bounded too."""
    from sdm_proxy.wire.postgres import tracker_client

    monkeypatch.setattr(tracker_client, "MAX_TRACKED_TEXT", 1000)
    t = StatementTracker()
    unnamed = _cstr("") + _cstr("SELECT '" + "x" * 400 + "'") + b"\0\0"
    t.on_client(P, unnamed)
    t.on_client(P, unnamed)
    assert t.check_names(P, unnamed) is not None
    t.on_client(S, b"")
    for mtype in (ord("1"), ord("1"), ord("Z")):
        t.on_server(mtype, b"I" if mtype == ord("Z") else b"")
    assert t._parse_chars == 0 and t.check_names(P, unnamed) is None


def test_a_failed_binds_portal_is_forgotten():
    """Review: in an aborted transaction every Bind fails but its portal -> statement entry stayed:
    a million Binds held a million entries."""
    t = StatementTracker()
    err = b"SERROR\0C25P02\0Mcurrent transaction is aborted\0\0"
    for i in range(50):
        t.on_client(B, _cstr(f"p{i}") + _cstr("") + b"\0" * 6)
        t.on_client(S, b"")
        t.on_server(ord("E"), err)
        t.on_server(ord("Z"), b"E")
    assert t._portal_stmt == {}


def test_portals_are_forgotten_when_the_transaction_ends():
    t = StatementTracker()
    for mtype, payload in [(P, _cstr("st") + _cstr("SELECT 1") + b"\0\0"),
                           (B, _cstr("po") + _cstr("st") + b"\0" * 6), (S, b"")]:
        t.on_client(mtype, payload)
    for answer in (ord("1"), ord("2")):
        t.on_server(answer, b"")
    t.on_server(ord("Z"), b"I")
    stmt = t.on_client(E, _cstr("po") + b"\0" * 4)
    assert stmt.text == UNKNOWN_TEXT and t.prepared_text("st") == "SELECT 1"


def test_a_long_name_is_refused_over_the_wire(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database="pgtest",
                             password=gateway.tokens["ann"])
    assert msgs[-1][0] == b"Z"
    sock.sendall(pgraw.parse("n" * 63, "SELECT 1") + pgraw.sync())
    assert pgraw.read_until_ready(sock)[-1][0] == b"Z"
    sock.sendall(pgraw.parse("n" * 63 + "x", "SELECT 2") + pgraw.sync())
    msgs = pgraw.read_until_end(sock)
    sock.close()
    fields = pgraw.error_fields(msgs[-1][1])
    assert msgs[-1][0] == b"E" and fields["C"] == "42622"


# ---- 3. statement size = the audit's text limit ----------------------------------------------------


def test_statements_beyond_the_audit_text_limit_are_refused(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database="pgtest",
                             password=gateway.tokens["ann"])
    assert msgs[-1][0] == b"Z"
    sql = "SELECT 1 /*" + " " * QUERY_TEXT_LIMIT + "*/; SELECT 'hidden'"
    sock.sendall(pgraw.query(sql))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    fields = pgraw.error_fields(msgs[-1][1])
    assert fields["C"] == "54000" and "audit" in fields["M"]
    assert not gateway.query_events("SELECT 'hidden'")


def test_a_large_bind_parameter_is_not_statement_text(gateway):
    big = "y" * (2 * QUERY_TEXT_LIMIT)
    with psycopg.connect(**gateway.kwargs("ann", "read-only")) as conn:
        assert conn.execute("SELECT length(%s::text)", (big,)).fetchone() == (len(big),)


# ---- 4. startup parameters -----------------------------------------------------------------------


def test_only_allowlisted_startup_parameters_are_forwarded():
    params = {"user": "u", "database": "d", "application_name": "nb", "options": "-c role=admin",
              "client_encoding": "LATIN1", "TimeZone": "UTC", "search_path": "x", "_pq_.ext": "1",
              "log_statement": "none"}
    assert upstream.forwarded_params(params) == {"application_name": "nb", "TimeZone": "UTC",
                                                 "search_path": "x", "client_encoding": "UTF8"}
    assert upstream.dropped_params(params) == ["_pq_.ext", "log_statement", "options"]


def test_options_are_dropped_and_recorded(gateway):
    kw = gateway.kwargs("ann", "read-only", application_name="opts-dropped", options="-c work_mem=1234kB")
    with psycopg.connect(**kw) as conn:
        assert conn.execute("SHOW work_mem").fetchone()[0] != "1234kB"
        assert conn.execute("SHOW client_encoding").fetchone()[0] == "UTF8"
    starts = [e for e in gateway.events("session.start") if (e.get("details") or {}).get("dropped_startup_parameters")]
    assert starts and "options" in starts[-1]["details"]["dropped_startup_parameters"]


def test_switching_client_encoding_closes_the_connection(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database="pgtest",
                             password=gateway.tokens["ann"])
    assert msgs[-1][0] == b"Z"
    sock.sendall(pgraw.query("SET client_encoding = 'LATIN1'"))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    errors = [pgraw.error_fields(p) for t, p in msgs if t == b"E"]
    assert errors and errors[-1]["C"] == "08P01" and "client_encoding UTF8" in errors[-1]["M"]


# ---- 5. non-UTF-8 user/database ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["user", "database"])
def test_non_utf8_user_or_database_is_refused_before_the_unlock(gateway, field):
    params = {"user": b"read-only", "database": b"pgtest", field: b"bad\xff\xfename"}
    body = struct.pack("!i", 196608) + b"".join(k.encode() + b"\0" + v + b"\0" for k, v in params.items()) + b"\0"
    sock = pgraw.connect(gateway.host, gateway.port)
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    t, payload = pgraw.read_message(sock)
    sock.close()
    fields = pgraw.error_fields(payload)
    assert t == b"E" and fields["C"] == "08P01" and fields["S"] == "FATAL" and "UTF-8" in fields["M"]


# ---- 6. failing policy checks ------------------------------------------------------------------


def _cred(**kw) -> UnlockedCredential:
    ds = DatasourceInfo(name="ds", type="postgres", host="127.0.0.1", port=1, database="x", tls="disable",
                        ca_file=None)
    base = {"user": "ann", "session_id": "s1", "datasource": ds, "credential": "c", "db_user": "u", "version": 1,
            "via": "role", "access_expires_at": None, "secret": SecretValue(b"pw-never-shown")}
    base.update(kw)
    return UnlockedCredential(**base)


def test_policy_check_failing_three_times_closes_the_connection():
    calls = []

    async def broken(cred):
        calls.append(1)
        raise ConnectionError("control plane down")

    async def main():
        ctx = SimpleNamespace(policy_interval=0.001, policy_check=broken)
        writer = SimpleNamespace(get_extra_info=lambda name: None)
        s = Session(ctx, None, writer)
        s.cred = _cred()
        with pytest.raises(_Close) as info:
            await asyncio.wait_for(s._watch(), 10)
        return info.value

    closed = asyncio.run(main())
    assert len(calls) == 3 and "control plane unreachable" in closed.message


# ---- 7. SCRAM work, login notices --------------------------------------------------------------


def _server_first(client: scram.ScramClient, iterations: int) -> bytes:
    nonce = client.initial().split(b"r=", 1)[1]
    return b"r=" + nonce + b"srv,s=" + base64.b64encode(b"salt") + b",i=" + str(iterations).encode()


def test_scram_iterations_are_capped():
    client = scram.ScramClient()
    with pytest.raises(UpstreamLoginError) as info:
        client.final(_server_first(client, 100_001), lambda: b"pw-never-shown")
    assert info.value.sqlstate == "08006" and "pw-never-shown" not in info.value.message


def test_scram_key_derivation_runs_off_the_event_loop(monkeypatch):
    threads = []
    real = scram.derive_keys

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(scram, "derive_keys", spy)
    client = scram.ScramClient()
    asyncio.run(client.final_async(_server_first(client, 4096), lambda: b"pw"))
    assert threads and threads[0] is not threading.main_thread()


def test_login_notices_are_capped():
    async def server(reader, writer):
        length = struct.unpack("!i", await reader.readexactly(4))[0]
        await reader.readexactly(length - 4)
        writer.write(pgraw.message(b"R", struct.pack("!i", 5) + b"salt"))  # md5 (clear text needs TLS)
        header = await reader.readexactly(5)
        await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)
        notice = pgraw.message(b"N", b"SNOTICE\0Mhello\0\0")
        writer.write(pgraw.message(b"R", struct.pack("!i", 0)) + notice * 500 + pgraw.message(b"Z", b"I"))
        await writer.drain()

    async def main():
        srv = await asyncio.start_server(server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        cred = _cred(datasource=DatasourceInfo(name="ds", type="postgres", host="127.0.0.1", port=port,
                                               database="x", tls="disable", ca_file=None))
        try:
            conn = await upstream.connect_upstream(cred, {}, scram_cache=None, timeout=10)
            conn.close()
            return conn
        finally:
            srv.close()

    conn = asyncio.run(main())
    assert len(conn.notices) == upstream.MAX_LOGIN_NOTICES


# ---- 5. a client that only sends ----------------------------------------------------------------


def test_a_client_that_never_reads_cannot_grow_the_answer_queue_without_end(gateway, monkeypatch):
    """Every Sync waits for its ReadyForQuery in the tracker's queue. A client sending Syncs and
    never reading made that queue (and the gateway's memory) grow without bound; past the cap the
    gateway stops reading from the client until answers come back, and then carries on."""
    from sdm_proxy.wire.postgres import session_relay

    cap = 1000
    monkeypatch.setattr(session_relay, "MAX_PENDING_ANSWERS", cap, raising=False)
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database="pgtest",
                             password=gateway.tokens["ann"])
    assert msgs[-1][0] == b"Z"
    session = next(s for s in list(gateway.listener.sessions) if s.cred is not None and s.cred.user == "ann"
                   and s.tracker.idle)
    flood = pgraw.sync() * 200_000  # 1 MB: the socket buffers may take it all, the tracker must not
    sock.setblocking(False)
    sent, stalled_since = 0, None
    while sent < len(flood):
        try:
            sent += sock.send(flood[sent:sent + 65536])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break  # the gateway has stopped reading from us
            time.sleep(0.01)
    time.sleep(1.0)  # whatever the gateway would still read, it has read by now
    assert session.tracker.pending <= cap + 65536 // 5, session.tracker.pending
    # Now read: answers drain, the gateway reads on, and every Sync is answered in order.
    sock.setblocking(True)
    sock.sendall(flood[sent:])
    answered = pgraw.read_until_ready(sock, count=200_000, timeout=60)
    assert sum(1 for m in answered if m[0] == b"Z") == 200_000
    sock.sendall(pgraw.query("SELECT 'still served'"))
    rows = pgraw.read_until_ready(sock)
    assert any(m[0] == b"D" and b"still served" in m[1] for m in rows)
    sock.close()
