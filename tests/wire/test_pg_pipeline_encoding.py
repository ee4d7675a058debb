"""What a pipelining client could hide from the audit (review of the client side).

PostgreSQL reports a changed client_encoding with its next ReadyForQuery, not when it changes, so
a pipeline could switch to GBK, send text the audit reads as UTF-8 and the server as GBK (where
``0x81`` swallows the ``\\`` after it), and switch back unseen. Text or names with non-ASCII bytes
therefore wait until the encoding is reported, and after an unsynced Execute are refused. And
messages that have no body (Sync, Flush, ...) must be exactly 4 bytes: a Flush with one byte got an
error the tracker did not expect, and every later outcome went to the wrong statement.
"""

from __future__ import annotations

import struct

import pytest

from sdm_proxy.wire.postgres.tracker_client import names_and_text_ascii

from tests.wire import pgraw

pytestmark = pytest.mark.postgres


def _login(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database="pgtest",
                             password=gateway.tokens["ann"])
    assert msgs[-1][0] == b"Z"
    return sock


def _parse_raw(name: bytes, sql: bytes) -> bytes:
    return pgraw.message(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", 0))


def _errors(msgs) -> list[dict]:
    return [pgraw.error_fields(p) for t, p in msgs if t == b"E"]


def test_non_ascii_text_after_an_unsynced_execute_is_refused(gateway):
    sock = _login(gateway)
    hidden = "SELECT length(E'\x81\\\\') AS gbk_hides_this -- pipeline_enc_1".encode("latin-1")
    sock.sendall(pgraw.parse("", "SET client_encoding TO 'GBK'") + pgraw.bind("", "") + pgraw.execute()
                 + _parse_raw(b"", hidden) + pgraw.bind("", "") + pgraw.execute()
                 + pgraw.parse("", "SET client_encoding TO 'UTF8'") + pgraw.bind("", "") + pgraw.execute()
                 + pgraw.sync())
    msgs = pgraw.read_until_end(sock)
    sock.close()
    errors = _errors(msgs)
    assert errors and errors[-1]["C"] == "0A000" and "send a Sync first" in errors[-1]["M"]
    assert not gateway.query_events("pipeline_enc_1")


def test_pipelined_text_waits_for_the_encoding_to_be_reported(gateway):
    """The second Query is not sent on until the first one's ReadyForQuery: that reports LATIN1,
    and the connection ends before the text the audit would have read as UTF-8 runs."""
    sock = _login(gateway)
    sock.sendall(pgraw.query("SET client_encoding TO 'LATIN1'") + pgraw.query("SELECT 'caf\u00e9' -- pipeline_enc_2"))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    errors = _errors(msgs)
    assert errors and errors[-1]["C"] == "08P01" and "client_encoding UTF8" in errors[-1]["M"]
    assert not gateway.query_events("pipeline_enc_2")


def test_pipelined_non_ascii_statements_still_run_in_utf8(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("SELECT 1") + pgraw.query("SELECT 'caf\u00e9' AS w -- pipeline_enc_3")
                 + pgraw.parse("", "SELECT 2") + pgraw.bind("", "") + pgraw.execute() + pgraw.sync()
                 + pgraw.parse("", "SELECT '\u00fcber' -- pipeline_enc_4") + pgraw.bind("", "") + pgraw.execute()
                 + pgraw.sync())
    msgs = pgraw.read_until_ready(sock, count=4)
    sock.close()
    assert not _errors(msgs)
    assert [r[0] for r in pgraw.data_rows(msgs)] == ["1", "caf\u00e9", "2", "\u00fcber"]
    assert gateway.query_events("pipeline_enc_3") and gateway.query_events("pipeline_enc_4")


@pytest.mark.parametrize("kind", [b"H", b"S"])
def test_a_sync_or_flush_with_a_body_is_refused_with_an_error(gateway, kind):
    """Before: a Flush with one byte got PostgreSQL's error, which the tracker charged to the next
    statement (every later outcome shifted by one); a Sync with 20,000 bytes made the server drop
    the connection without a word."""
    sock = _login(gateway)
    body = b"x" if kind == b"H" else b"x" * 20_000
    sock.sendall(pgraw.message(kind, body) + pgraw.query("SELECT 'after' -- pipeline_enc_5"))
    msgs = pgraw.read_until_end(sock)
    sock.close()
    errors = _errors(msgs)
    assert errors and errors[-1]["C"] == "08P01" and "invalid message length" in errors[-1]["M"]
    assert not gateway.query_events("pipeline_enc_5")


@pytest.mark.parametrize("mtype,payload,ascii_", [
    (ord("Q"), b"SELECT 1\0", True),
    (ord("Q"), "SELECT '\u00e9'\0".encode(), False),
    (ord("P"), b"s1\0SELECT $1\0\x00\x01\x00\x00\x04\xa0", True),  # a parameter type OID is not text
    (ord("P"), "s\u00e9\0SELECT 1\0".encode() + b"\x00\x00", False),
    (ord("B"), b"p\0s\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x02\xff\xfe", True),  # binary parameter
    (ord("E"), b"p\0\x00\x00\x00\x80", True),  # max rows 128
    (ord("E"), "p\u00e9\0".encode() + b"\x00\x00\x00\x00", False),
    (ord("C"), "Ss\u00e9\0".encode(), False),
])
def test_which_bytes_count_as_text(mtype, payload, ascii_):
    assert names_and_text_ascii(mtype, payload) is ascii_
