"""What a pipelining client could hide from the audit (review of the client side).

PostgreSQL reports a changed client_encoding with its next ReadyForQuery, not when it changes, so
a pipeline could switch to GBK, send text the audit reads as UTF-8 and the server as GBK (where
``0x81`` swallows the ``\\`` after it), and switch back unseen. Text whose bytes some client
encoding could pair with an ASCII byte, and non-ASCII names, therefore wait until the encoding is
reported, and after an unsynced Execute are refused; other non-ASCII text goes on at once. And
messages that have no body (Sync, Flush, ...) must be exactly 4 bytes: a Flush with one byte got an
error the tracker did not expect, and every later outcome went to the wrong statement.
"""

from __future__ import annotations

import struct

import pytest

import psycopg

from sdm_proxy.wire.postgres.encoding_guard import could_swallow_backslash, needs_known_encoding

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


def _last_error(sock, data: bytes) -> dict:
    """Send ``data``, read until the gateway closes: the fields of its last ErrorResponse."""
    sock.sendall(data)
    msgs = pgraw.read_until_end(sock, timeout=10)
    sock.close()
    errors = _errors(msgs)
    assert errors, msgs
    return errors[-1]


def test_non_ascii_text_after_an_unsynced_execute_is_refused(gateway):
    sock = _login(gateway)
    hidden = "SELECT length(E'\x81\\\\') AS gbk_hides_this -- pipeline_enc_1".encode("latin-1")
    error = _last_error(sock, pgraw.parse("", "SET client_encoding TO 'GBK'") + pgraw.bind("", "") + pgraw.execute()
                        + _parse_raw(b"", hidden) + pgraw.bind("", "") + pgraw.execute()
                        + pgraw.parse("", "SET client_encoding TO 'UTF8'") + pgraw.bind("", "") + pgraw.execute()
                        + pgraw.sync())
    assert error["C"] == "0A000" and "send a Sync first" in error["M"]
    assert not gateway.query_events("pipeline_enc_1")


def test_pipelined_text_waits_for_the_encoding_to_be_reported(gateway):
    """The second Query is not sent on until the first one's ReadyForQuery: that reports LATIN1,
    and the connection ends before the text the audit would have read as UTF-8 runs."""
    sock = _login(gateway)
    error = _last_error(sock, pgraw.query("SET client_encoding TO 'LATIN1'")
                        + pgraw.query("SELECT E'\u4e2d\\\\' -- pipeline_enc_2"))
    assert error["C"] == "08P01" and "client_encoding UTF8" in error["M"]
    assert not gateway.query_events("pipeline_enc_2")


def test_pipelined_non_ascii_statements_still_run_in_utf8(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("SELECT 1") + pgraw.query("SELECT E'\u4e2d\\\\' AS w -- pipeline_enc_3")
                 + pgraw.parse("", "SELECT 2") + pgraw.bind("", "") + pgraw.execute() + pgraw.sync()
                 + pgraw.parse("", "SELECT '\u00fcber\u4e2d' -- pipeline_enc_4") + pgraw.bind("", "") + pgraw.execute()
                 + pgraw.sync())
    msgs = pgraw.read_until_ready(sock, count=4)
    sock.close()
    assert not _errors(msgs)
    assert [r[0] for r in pgraw.data_rows(msgs)] == ["1", "\u4e2d\\", "2", "\u00fcber\u4e2d"]
    assert gateway.query_events("pipeline_enc_3") and gateway.query_events("pipeline_enc_4")


@pytest.mark.parametrize("kind", [b"H", b"S"])
def test_a_sync_or_flush_with_a_body_is_refused_with_an_error(gateway, kind):
    """Before: a Flush with one byte got PostgreSQL's error, which the tracker charged to the next
    statement (every later outcome shifted by one); a Sync with 20,000 bytes made the server drop
    the connection without a word."""
    sock = _login(gateway)
    body = b"x" if kind == b"H" else b"x" * 20_000
    error = _last_error(sock, pgraw.message(kind, body) + pgraw.query("SELECT 'after' -- pipeline_enc_5"))
    assert error["C"] == "08P01" and "invalid message length" in error["M"]
    assert not gateway.query_events("pipeline_enc_5")


def test_ordinary_non_ascii_text_is_not_held_even_in_a_pipeline(gateway):
    """Review: psycopg's pipeline mode and executemany without prepared statements send several
    Parse/Bind/Execute before one Sync; text such as 'café' or "größe" keeps its structure in
    every encoding, so it is not refused."""
    with psycopg.connect(**gateway.kwargs("bob", "superuser"), prepare_threshold=None, autocommit=True) as conn:
        conn.execute('CREATE TEMP TABLE enc_pipe ("gr\u00f6\u00dfe" text)')
        with conn.pipeline():
            conn.execute("SELECT 1")
            got = conn.execute("SELECT 'caf\u00e9' -- pipeline_enc_6")
        assert got.fetchone() == ("caf\u00e9",)
        with conn.cursor() as cur:
            cur.executemany('INSERT INTO enc_pipe ("gr\u00f6\u00dfe") VALUES (%s)', [("a",), ("b",), ("c",)])
        assert conn.execute('SELECT count("gr\u00f6\u00dfe") FROM enc_pipe').fetchone() == (3,)
    assert gateway.query_events("pipeline_enc_6")


def test_after_a_copy_held_text_is_refused_not_left_waiting(gateway):
    """Review: the server ignores a Sync sent during COPY FROM STDIN, so no ReadyForQuery was due,
    and a held statement after the COPY waited for ever. It is refused (no Sync follows the COPY)."""
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="superuser", database="pgtest",
                             password=gateway.tokens["bob"])
    sock.sendall(pgraw.query("CREATE TEMP TABLE enc_copy (v int)"))
    pgraw.read_until_ready(sock)
    error = _last_error(sock, pgraw.parse("", "COPY enc_copy FROM STDIN") + pgraw.bind("", "") + pgraw.execute()
                        + pgraw.sync() + pgraw.message(b"d", b"1\n") + pgraw.message(b"c")
                        + pgraw.parse("", "SELECT E'\u4e2d\\\\' -- pipeline_enc_7") + pgraw.bind("", "")
                        + pgraw.execute() + pgraw.sync())
    assert error["C"] == "0A000"
    assert not gateway.query_events("pipeline_enc_7")


@pytest.mark.parametrize("text,risky", [
    ("SELECT 1", False),
    ("SELECT E'\\\\'", False),  # a backslash with nothing non-ASCII before it
    ("SELECT 'caf\u00e9', 'gr\u00f6\u00dfe', '\u4e2d\u6587', '\u20ac'", False),  # no backslash to take
    ("SELECT E'\u4e2d\\\\'", True),  # E4 B8 | AD + backslash in GBK
    ("SELECT E'\u4e2d\u6587\\\\'", True),  # pairs in GBK, but in SJIS AD is one byte and 87 takes the backslash
    ("SELECT E'\u00e9\\\\'", False),  # C3 A9: two bytes in GBK, two katakana in SJIS
    ("SELECT E'\u00df\\\\'", True),  # C3 9F: in SJIS C3 is one byte, 9F takes the backslash
])
def test_which_text_another_encoding_could_restructure(text, risky):
    assert could_swallow_backslash(text.encode()) is risky


def test_sjis_single_byte_katakana_shift_the_pairing():
    assert could_swallow_backslash(b"'\xb1\x81\\'")  # 0xB1 alone in SJIS, then 0x81 takes the backslash
    assert not could_swallow_backslash(b"'\xb1\xb1\\'")


@pytest.mark.parametrize("mtype,payload,held", [
    (ord("Q"), b"SELECT 1\0", False),
    (ord("Q"), "SELECT E'\u4e2d\\\\'\0".encode(), True),
    (ord("Q"), "SELECT '\u4e2d'\0".encode(), False),
    (ord("P"), b"s1\0SELECT $1\0\x00\x01\x00\x00\x04\xa0", False),  # a parameter type OID is not text
    (ord("P"), "s\u00e9\0SELECT 1\0".encode() + b"\x00\x00", True),  # a non-ASCII name
    (ord("P"), "\0SELECT 'caf\u00e9'\0".encode() + b"\x00\x00", False),
    (ord("B"), b"p\0s\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x02\xff\xfe", False),  # binary parameter
    (ord("E"), b"p\0\x00\x00\x00\x80", False),  # max rows 128
    (ord("E"), "p\u00e9\0".encode() + b"\x00\x00\x00\x00", True),
    (ord("C"), "Ss\u00e9\0".encode(), True),
])
def test_which_requests_wait_for_the_encoding(mtype, payload, held):
    assert needs_known_encoding(mtype, payload) is held
