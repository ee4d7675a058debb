"""COPY FROM STDIN and the statement tracker: while the server takes COPY data it ignores Sync (and
Flush), so those get no answer. Before, the tracker waited for one anyway and every later result
landed on the wrong statement (a DELETE recorded as a syntax error, its rows on another statement),
and libpq's extended-protocol COPY (Parse/Bind/Describe/Execute/Sync, data, CopyDone, Sync) ended
the session at the next statement."""

from __future__ import annotations

import struct

import pytest
from sdm_proxy.wire.postgres.tracker import StatementTracker, TrackerDesync

from tests.wire import pgraw

P, B, D, E, S, Q = (ord(c) for c in "PBDESQ")
COPY_DONE, COPY_FAIL = ord("c"), ord("f")


def _parse(name, sql):  # the tracker takes payloads: the wire message without its 5-byte header
    return pgraw.parse(name, sql)[5:]


def _bind(portal, stmt):
    return pgraw.bind(portal, stmt)[5:]


def _execute(portal=""):
    return pgraw.execute(portal)[5:]


def _then_a_query_is_matched_right(t: StatementTracker) -> None:
    after = t.on_client(Q, b"DELETE FROM victim\0")
    assert t.on_server(ord("C"), b"DELETE 3\0") == []
    assert t.on_server(ord("Z"), b"I") == [after]
    assert after.status == "ok" and after.rows == 3 and t.idle


# ---- the tracker alone --------------------------------------------------------------------------


def test_a_sync_sent_while_the_server_takes_copy_data_gets_no_answer():
    t = StatementTracker()
    copy = t.on_client(Q, b"COPY t FROM STDIN\0")
    t.on_server(ord("G"), b"\0\0\0")
    assert t.copy_in
    t.on_client(S, None)  # ignored by the server
    t.on_client(COPY_DONE, None)
    assert not t.copy_in
    t.on_server(ord("C"), b"COPY 1\0")
    assert t.on_server(ord("Z"), b"I") == [copy] and copy.rows == 1 and copy.status == "ok"
    _then_a_query_is_matched_right(t)


def test_a_sync_pipelined_behind_the_copy_before_the_server_answered():
    t = StatementTracker()
    copy = t.on_client(Q, b"COPY t FROM STDIN\0")
    t.on_client(S, None)  # sent before the CopyInResponse arrived: still ignored by the server
    t.on_client(COPY_DONE, None)
    assert t.pending == 3
    t.on_server(ord("G"), b"\0\0\0")
    assert not t.copy_in and t.pending == 1  # the Sync dropped, the CopyDone marker used up
    t.on_server(ord("C"), b"COPY 1\0")
    assert t.on_server(ord("Z"), b"I") == [copy]
    _then_a_query_is_matched_right(t)


def test_extended_protocol_copy_as_libpq_sends_it():
    t = StatementTracker()
    t.on_client(P, _parse("", "COPY t FROM STDIN"))
    t.on_client(B, _bind("", ""))
    t.on_client(D, b"P\0")
    copy = t.on_client(E, _execute())
    t.on_client(S, None)  # libpq sends Sync right behind Execute: the server ignores it in COPY
    for answer in (ord("1"), ord("2"), ord("n")):
        t.on_server(answer, None)
    t.on_server(ord("G"), b"\0\0\0")
    t.on_client(COPY_DONE, None)
    t.on_client(S, None)  # ... and another after CopyDone: this one is answered
    assert t.on_server(ord("C"), b"COPY 2\0") == [copy] and copy.rows == 2
    assert t.on_server(ord("Z"), b"I") == [] and t.idle
    _then_a_query_is_matched_right(t)


def test_a_copy_failed_by_the_client_in_the_extended_protocol():
    t = StatementTracker()
    t.on_client(P, _parse("", "COPY t FROM STDIN"))
    t.on_client(B, _bind("", ""))
    copy = t.on_client(E, _execute())
    t.on_client(S, None)
    t.on_server(ord("1"), None)
    t.on_server(ord("2"), None)
    t.on_server(ord("G"), b"\0\0\0")
    t.on_client(COPY_FAIL, b"stop\0")
    t.on_client(S, None)
    assert t.on_server(ord("E"), b"C57014\0MCOPY from stdin failed: stop\0\0") == [copy]
    assert copy.status == "cancelled" and not t.copy_in
    assert t.on_server(ord("Z"), b"I") == [] and t.idle
    _then_a_query_is_matched_right(t)


def test_a_request_pipelined_into_the_copy_data_fails_closed():
    t = StatementTracker()
    t.on_client(Q, b"COPY t FROM STDIN\0")
    t.on_client(Q, b"SELECT 'never runs'\0")  # the server would read it as bad COPY data
    with pytest.raises(TrackerDesync, match="pipelined into COPY FROM STDIN"):
        t.on_server(ord("G"), b"\0\0\0")


def test_a_copy_done_outside_copy_is_ignored_like_the_server_does():
    t = StatementTracker()
    first = t.on_client(Q, b"SELECT 1\0")
    t.on_client(COPY_DONE, None)
    t.on_server(ord("T"), None)
    t.on_server(ord("C"), b"SELECT 1\0")
    assert t.on_server(ord("Z"), b"I") == [first] and t.idle
    t.on_client(COPY_DONE, None)  # with nothing pending: nothing to mark
    assert t.idle
    _then_a_query_is_matched_right(t)


# ---- through the gateway, against PostgreSQL ---------------------------------------------------


def _outcomes(gateway, marker: str) -> list[tuple[str, str, int | None]]:
    """(query text, status, rows) of the statements carrying ``marker``, oldest first."""
    return [(q["query"], (end := gateway.outcome(q))["status"], end["rows"]) for q in gateway.query_events(marker)]


def _login(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="superuser", database="pgtest",
                             password=gateway.tokens["bob"])
    assert msgs[-1][0] == b"Z", msgs
    return sock


def test_outcomes_stay_on_their_statements_after_a_sync_inside_copy(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE t(x int); CREATE TEMP TABLE victim(x int); "
                             "INSERT INTO victim VALUES (1), (2), (3) /*cs-setup*/"))
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query("COPY t FROM STDIN /*cs-copy*/"))
    assert pgraw.read_message(sock)[0] == b"G"
    sock.sendall(pgraw.sync() + pgraw.message(b"d", b"5\n") + pgraw.message(b"c"))
    pgraw.read_until_ready(sock)
    for sql in ("SELEC broken1 /*cs-1*/", "DELETE FROM victim /*cs-2*/", "SELEC broken2 /*cs-3*/"):
        sock.sendall(pgraw.query(sql))
        pgraw.read_until_ready(sock)
    sock.sendall(pgraw.message(b"X"))
    sock.close()
    assert _outcomes(gateway, "/*cs-copy*/") == [("COPY t FROM STDIN /*cs-copy*/", "ok", 1)]
    assert [o[1:] for o in _outcomes(gateway, "/*cs-1*/")] == [("error", None)]
    assert _outcomes(gateway, "/*cs-2*/") == [("DELETE FROM victim /*cs-2*/", "ok", 3)]
    assert [o[1:] for o in _outcomes(gateway, "/*cs-3*/")] == [("error", None)]


def test_extended_protocol_copy_from_stdin_keeps_the_session(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE tx(x int) /*ec-setup*/"))
    pgraw.read_until_ready(sock)
    # As libpq's PQsendQueryParams does: Parse, Bind, Describe, Execute and Sync in one go.
    sock.sendall(pgraw.parse("", "COPY tx FROM STDIN /*ec-copy*/") + pgraw.message(b"B", b"\0\0" + b"\0" * 6)
                 + pgraw.message(b"D", b"P\0") + pgraw.message(b"E", b"\0\0\0\0\0") + pgraw.sync())
    while (msg := pgraw.read_message(sock))[0] != b"G":
        assert msg[0] in (b"1", b"2", b"n"), msg
    sock.sendall(pgraw.message(b"d", b"7\n8\n") + pgraw.message(b"c") + pgraw.sync())
    assert pgraw.read_until_ready(sock)[-1][0] == b"Z"
    sock.sendall(pgraw.query("SELECT count(*) FROM tx /*ec-after*/"))
    rows = pgraw.read_until_ready(sock)
    assert any(m[0] == b"D" and m[1].endswith(b"2") for m in rows), rows
    sock.sendall(pgraw.message(b"X"))
    sock.close()
    assert _outcomes(gateway, "/*ec-copy*/") == [("COPY tx FROM STDIN /*ec-copy*/", "ok", 2)]
    assert _outcomes(gateway, "/*ec-after*/") == [("SELECT count(*) FROM tx /*ec-after*/", "ok", 1)]


def test_a_statement_sent_into_the_copy_data_ends_the_session(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE ty(x int) /*pi-setup*/"))
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query("COPY ty FROM STDIN /*pi-copy*/"))
    assert pgraw.read_message(sock)[0] == b"G"
    sock.sendall(pgraw.query("SELECT 'into the copy' /*pi-stmt*/"))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    fields = pgraw.error_fields(msgs[-1][1])
    assert msgs[-1][0] == b"E" and fields["C"] == "08P01" and "during COPY FROM STDIN" in fields["M"], fields
    assert not gateway.query_events("/*pi-stmt*/")  # never recorded as started: it was never forwarded


# ---- where the server and the tracker could part ways --------------------------------------------


def test_a_sync_after_copy_data_fails_closed():
    """Bad data ends COPY early, and the server then answers a Sync it would otherwise ignore:
    after data, a Sync before CopyDone cannot be followed, so the tracker refuses to guess."""
    t = StatementTracker()
    t.on_client(Q, b"COPY t FROM STDIN\0")
    t.on_client(ord("d"), None)
    t.on_client(S, None)
    with pytest.raises(TrackerDesync, match="Sync was sent after COPY data"):
        t.on_server(ord("G"), b"\0\0\0")
    t = StatementTracker()
    t.on_client(Q, b"COPY t FROM STDIN\0")
    t.on_server(ord("G"), b"\0\0\0")
    assert t.refused_in_copy(S) is None  # no data yet: ignored by the server, as libpq relies on
    t.on_client(ord("d"), None)
    assert "Sync after COPY data" in t.refused_in_copy(S)
    assert "during COPY FROM STDIN" in t.refused_in_copy(Q)
    assert t.refused_in_copy(ord("d")) is None and t.refused_in_copy(COPY_DONE) is None


@pytest.mark.parametrize("answer", [b"Z", b"1", b"2", b"3", b"C", b"T", b"n"])
def test_an_answer_with_nothing_pending_fails_closed(answer):
    t = StatementTracker()
    done = t.on_client(Q, b"SELECT 1\0")
    t.on_server(ord("C"), b"SELECT 1\0")
    assert t.on_server(ord("Z"), b"I") == [done] and t.idle
    assert t.on_server(ord("S"), b"in_hot_standby\0off\0") == []  # settings may change unasked
    assert t.on_server(ord("E"), b"SFATAL\0C57P01\0Mshutdown\0\0") == []  # and a FATAL may come
    with pytest.raises(TrackerDesync, match="no request pending"):
        t.on_server(answer[0], b"I\0")


def test_requests_sent_while_the_server_skips_to_sync_are_finished_at_once():
    """After an extended-protocol error the server ignores everything up to the next Sync. What
    the client sends meanwhile is not queued (a batch of 20,000 rows failing at the first one would
    otherwise fill the queue past its cap and stall on a Sync never read): statements come back
    already finished as not executed, and a simple Query among them is not taken for run."""
    t = StatementTracker()
    t.on_client(P, _parse("", "INSERT INTO t VALUES (1)"))
    t.on_client(B, _bind("", ""))
    first = t.on_client(E, _execute())
    t.on_server(ord("1"), None)
    t.on_server(ord("2"), None)
    assert t.on_server(ord("E"), b"C23505\0Mduplicate key\0\0") == [first] and first.status == "error"
    ignored = []
    for _ in range(50_000):
        t.on_client(B, _bind("", ""))
        ignored.append(t.on_client(E, _execute()))
    ignored.append(t.on_client(Q, b"DELETE FROM victim\0"))
    assert t.pending == 0
    assert all(s.ignored and s.skipped and s.status == "error" and "not executed" in s.error for s in ignored)
    assert ignored[-1].text == "DELETE FROM victim"
    t.on_client(S, None)
    assert t.on_server(ord("Z"), b"I") == [] and t.idle
    _then_a_query_is_matched_right(t)


def test_through_the_gateway_a_sync_after_bad_copy_data_ends_the_session(gateway):
    """The review's attack: bad COPY data, Sync, CopyDone, then redefine s1 and Bind it. The server
    leaves COPY at the bad row and answers the Sync; the gateway ends the session instead."""
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE tz(x int) /*sd-setup*/"))
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.parse("", "COPY tz FROM STDIN /*sd-copy*/") + pgraw.bind("", "") + pgraw.execute()
                 + pgraw.sync())
    while (msg := pgraw.read_message(sock))[0] != b"G":
        assert msg[0] in (b"1", b"2"), msg
    sock.sendall(pgraw.message(b"d", b"not-a-number\n") + pgraw.sync() + pgraw.message(b"c")
                 + pgraw.close_statement("s1") + pgraw.parse("s1", "SELECT 'redefined' /*sd-evil*/") + pgraw.sync())
    msgs = pgraw.read_until_end(sock)
    sock.close()
    fatal = [pgraw.error_fields(m[1]) for m in msgs if m[0] == b"E"]
    assert any(f.get("C") == "08P01" and "Sync after COPY data" in f.get("M", "") for f in fatal), fatal


def test_through_the_gateway_a_failing_batch_past_the_cap_still_ends(gateway, monkeypatch):
    """A well-behaved pipelining client (writing and reading at once) whose batch fails at its first
    row: the server answers nothing until the Sync at the end, so those requests must not count
    against the cap on unanswered requests, or the gateway would never read that Sync."""
    import threading

    from sdm_proxy.wire.postgres import session_relay

    monkeypatch.setattr(session_relay, "MAX_PENDING_ANSWERS", 1000)
    sock = _login(gateway)
    batch = pgraw.parse("", "SELECT x FROM no_such_table /*fb-batch*/") + \
        (pgraw.bind("", "") + pgraw.execute()) * 20_000 + pgraw.sync()
    writer = threading.Thread(target=sock.sendall, args=(batch,), daemon=True)
    writer.start()
    msgs = pgraw.read_until_ready(sock, timeout=60)
    writer.join(10)
    assert [m[0] for m in msgs] == [b"E", b"Z"]
    sock.sendall(pgraw.query("SELECT 'after the batch' /*fb-after*/"))
    assert any(m[0] == b"D" for m in pgraw.read_until_ready(sock))
    sock.close()
    assert _outcomes(gateway, "/*fb-after*/") == [("SELECT 'after the batch' /*fb-after*/", "ok", 1)]


def test_bytes_that_are_not_utf8_in_tags_and_names_are_recorded_not_fatal(gateway):
    """A sqlcommenter tag, a prepared statement's name and a startup parameter name carrying a byte
    that is not UTF-8 reached the event body as a lone surrogate: its write failed (in commit mode,
    with every event of its batch) and the session ended with an internal error. They are now
    recorded with U+FFFD; PostgreSQL itself refuses such bytes (22021), and the session goes on."""
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="superuser", database="pgtest",
                             password=gateway.tokens["bob"])
    assert msgs[-1][0] == b"Z", msgs
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(b"SELECT 1 /*nu-tag*/ /*sdm_cell='\xff'*/") + 1)
                 + b"SELECT 1 /*nu-tag*/ /*sdm_cell='\xff'*/\0")
    pgraw.read_until_ready(sock)
    name = b"s\xff"
    sock.sendall(pgraw.message(b"P", name + b"\0SELECT 2 /*nu-stmt*/\0\0\0") + pgraw.message(b"B", b"\0" + name + b"\0" + b"\0" * 6)
                 + pgraw.message(b"E", b"\0\0\0\0\0") + pgraw.sync())
    answer = pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query("SELECT 'still here' /*nu-after*/"))
    after = pgraw.data_rows(pgraw.read_until_ready(sock))
    sock.close()
    assert answer[-1][0] == b"Z" and after == [["still here"]]
    [tagged] = gateway.query_events("/*nu-tag*/")
    assert tagged["client"]["cell_id"] == "\ufffd"
    [named] = gateway.query_events("/*nu-stmt*/")
    assert named["details"]["prepared_statement"] == "s\ufffd"
