"""The pure layers on their own: framing, the phase table, the statement tracker, SCRAM, tags."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sdm_proxy.wire.postgres import framing
from sdm_proxy.wire.postgres.auth import UpstreamAuthenticator
from sdm_proxy.wire.postgres.errors import ClientProtocolError, ServerProtocolError, UpstreamLoginError
from sdm_proxy.wire.postgres.machine import TRANSITIONS, Action, FrontMachine, Input, Phase
from sdm_proxy.wire.postgres.scram import ScramClient, ScramKeyCache, md5_password, saslprep
from sdm_proxy.wire.postgres.tracker import UNKNOWN_TEXT, StatementTracker, TrackerDesync
from sdm_proxy.wire.sqlcomment import parse_tags

from tests.wire import pgraw

# ---- framing ---------------------------------------------------------------------------------------


def test_startup_packets_parse():
    pkt = framing.parse_startup_packet(pgraw.startup_packet({"user": "u", "database": "d", "application_name": "x"}))
    assert isinstance(pkt, framing.StartupMessage) and pkt.params == {"user": "u", "database": "d",
                                                                      "application_name": "x"}
    assert isinstance(framing.parse_startup_packet(struct.pack("!ii", 8, 80877103)), framing.SSLRequest)
    assert isinstance(framing.parse_startup_packet(struct.pack("!ii", 8, 80877104)), framing.GSSENCRequest)
    cancel = framing.parse_startup_packet(struct.pack("!iiii", 16, 80877102, 42, -7))
    assert cancel == framing.CancelRequest(42, -7) and "-7" not in repr(cancel)
    v32 = framing.parse_startup_packet(pgraw.startup_packet({"user": "u", "_pq_.x": "1"}, version=(3 << 16) | 2))
    assert v32.minor == 2 and v32.protocol_extensions == ["_pq_.x"]


@pytest.mark.parametrize("packet,match", [
    (struct.pack("!i", 4) + b"", "invalid length"),
    (struct.pack("!ii", 10_001, 196608), "invalid length"),
    (struct.pack("!ii", 12, 80877103) + b"xxxx", "encryption request"),
    (struct.pack("!ii", 8, 80877102), "cancel request"),
    (pgraw.startup_packet({"user": "u"}, version=2 << 16), "unsupported frontend protocol 2.0"),
    (pgraw.startup_packet({"user": "u"}, version=1234 << 16), "unsupported frontend protocol"),
    (struct.pack("!ii", 12, 196608) + b"user", "terminator"),
    (struct.pack("!ii", 14, 196608) + b"user\0\0", "parameter without value"),
])
def test_bad_startup_packets_are_client_errors(packet, match):
    with pytest.raises(ClientProtocolError, match=match):
        framing.parse_startup_packet(packet)


def test_error_response_encoding_round_trips():
    raw = framing.error_response("28P01", "no\0nul here", severity="FATAL", detail="d", hint="h")
    (t, payload), = framing.split_messages(raw)
    assert t == ord("E")
    assert framing.parse_error_fields(payload) == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "no?nul here",
                                                   "D": "d", "H": "h"}


def test_command_tag_rows():
    assert framing.command_tag_rows(b"SELECT 5\0") == 5
    assert framing.command_tag_rows(b"INSERT 0 3\0") == 3
    assert framing.command_tag_rows(b"COPY 10\0") == 10
    assert framing.command_tag_rows(b"CREATE TABLE\0") is None
    assert framing.command_tag_rows(b"BEGIN\0") is None
    assert framing.command_tag_rows(b"SELECT 18446744073709551615\0") == (1 << 64) - 1
    # a server's absurd count is no count (int() of 5000 digits raises, ending the session)
    assert framing.command_tag_rows(b"SELECT " + b"9" * 5000 + b"\0") is None
    assert framing.command_tag_rows(b"INSERT 0 " + b"1" * 21 + b"\0") is None


def _stream(messages: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(pgraw.message(t, body) for t, body in messages)


server_messages = st.lists(st.tuples(st.sampled_from([b"D", b"C", b"Z", b"T", b"1", b"N", b"d"]),
                                     st.binary(max_size=300)), max_size=30)


@given(server_messages, st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
@settings(max_examples=300, deadline=None)
def test_splitter_forwards_every_byte_and_reports_every_parsed_message(messages, cuts):
    data = _stream(messages)
    splitter = framing.MessageSplitter(full="CZ", observe="T1", count_rows=True)
    points = sorted({min(c, len(data)) for c in cuts}) + [len(data)]
    forwarded, seen, prev = b"", [], 0
    rows = 0
    for p in points:
        msgs, fwd = splitter.feed(data[prev:p])
        for m in msgs:
            assert fwd[m.start:m.start + 1] == bytes([m.type])  # offsets point at the type byte
        forwarded += fwd
        seen += [(bytes([m.type]), m.payload) for m in msgs]
        rows += sum(m.rows for m in msgs)
        prev = p
    assert forwarded == data and splitter.at_boundary
    expected = [(t, body if t in (b"C", b"Z") else None) for t, body in messages if t in (b"C", b"Z", b"T", b"1")]
    assert seen == expected
    counted_before_last = sum(1 for i, (t, _) in enumerate(messages) if t == b"D"
                              and any(u in (b"C", b"Z", b"T", b"1") for u, _ in messages[i:]))
    assert rows == counted_before_last


def test_splitter_holds_back_a_parsed_message_until_whole_and_streams_the_rest():
    q = pgraw.message(b"Q", b"SELECT 1\0")
    d = pgraw.message(b"d", b"x" * 100)
    splitter = framing.MessageSplitter(full="Q")
    msgs, fwd = splitter.feed(d[:50])
    assert msgs == [] and fwd == d[:50]  # pass-through bytes go on at once
    msgs, fwd = splitter.feed(d[50:] + q[:7])
    assert msgs == [] and fwd == d[50:]  # the partial Query is held back
    msgs, fwd = splitter.feed(q[7:])
    assert [(m.type, m.payload) for m in msgs] == [(ord("Q"), b"SELECT 1\0")] and fwd == q


def test_splitter_bounds_lengths_before_buffering():
    splitter = framing.MessageSplitter(full="Q", max_full=1000)
    with pytest.raises(ClientProtocolError, match="too large"):
        splitter.feed(b"Q" + struct.pack("!I", 5000) + b"x")
    with pytest.raises(ClientProtocolError, match="invalid message length"):
        framing.MessageSplitter(full="Q").feed(b"Q" + struct.pack("!I", 2))


def test_splitter_prefix_mode_reports_the_head_of_a_big_bind():
    body = b"portal\0stmt\0" + b"z" * 10_000
    raw = pgraw.message(b"B", body)
    splitter = framing.MessageSplitter(full="", prefix={"B": 64})
    msgs, fwd = splitter.feed(raw[:30])
    assert msgs == [] and fwd == b""
    msgs, fwd = splitter.feed(raw[30:])
    assert msgs[0].truncated and msgs[0].payload == body[:64] and fwd == raw


# ---- the phase table ----------------------------------------------------------------------------------


def test_phase_table_happy_path_and_out_of_order():
    m = FrontMachine()
    assert m.advance(Input.GSSENC_REQUEST) is Action.DECLINE_GSS
    assert m.advance(Input.SSL_REQUEST) is Action.ANSWER_SSL
    assert m.advance(Input.STARTUP) is Action.ASK_PASSWORD
    with pytest.raises(ClientProtocolError, match="expected a password message"):
        FrontMachine(Phase.AUTH).advance(Input.STARTUP)
    assert m.advance(Input.PASSWORD) is Action.LOGIN
    assert m.advance(Input.UPSTREAM_OK) is Action.START_RELAY and m.phase is Phase.RELAY
    with pytest.raises(ClientProtocolError):
        FrontMachine(Phase.ENCRYPTED).advance(Input.SSL_REQUEST)  # a second SSLRequest
    assert FrontMachine(Phase.ENCRYPTED).advance(Input.CANCEL_REQUEST) is Action.FORWARD_CANCEL  # cancel over TLS


def test_every_live_phase_can_fail_and_terminate():
    for phase in (Phase.INITIAL, Phase.GSS_DECLINED, Phase.ENCRYPTED, Phase.AUTH, Phase.LOGIN, Phase.RELAY):
        assert TRANSITIONS[(phase, Input.FAIL)] == (Phase.CLOSING, Action.SEND_FATAL)
        assert TRANSITIONS[(phase, Input.TERMINATE)][0] is Phase.CLOSED


# ---- tracker ------------------------------------------------------------------------------------------


def _parse(name, sql):
    return name.encode() + b"\0" + sql.encode() + b"\0\0\0"


def _bind(portal, stmt):
    return portal.encode() + b"\0" + stmt.encode() + b"\0\0\0\0\0\0\0"


def _execute(portal=""):
    return portal.encode() + b"\0\0\0\0\0"


P, B, E, S, Q = (ord(c) for c in "PBESQ")


def test_tracker_matches_pipelined_results_in_order():
    t = StatementTracker(clock=iter(range(100)).__next__)
    stmts = []
    for i in range(3):
        t.on_client(P, _parse("", f"SELECT {i}"))
        t.on_client(B, _bind("", ""))
        stmts.append(t.on_client(E, _execute()))
    t.on_client(S, None)
    assert [s.text for s in stmts] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    done = []
    for _ in range(3):
        done += t.on_server(ord("1"), None) + t.on_server(ord("2"), None)
        done += t.on_server(ord("C"), b"SELECT 1\0", rows=1)
    done += t.on_server(ord("Z"), b"I")
    assert done == stmts and all(s.rows == 1 and s.status == "ok" for s in stmts) and t.idle


def test_tracker_error_skips_to_sync_and_simple_query_errors_do_not():
    t = StatementTracker()
    a = t.on_client(Q, b"SELECT 1/0\0")
    t.on_server(ord("E"), b"SERROR\0C22012\0Mdivision by zero\0\0")
    assert t.on_server(ord("Z"), b"I") == [a] and a.status == "error" and a.error == "22012: division by zero"
    t.on_client(P, _parse("", "SELECT x"))
    t.on_client(B, _bind("", ""))
    b = t.on_client(E, _execute())
    c = t.on_client(E, _execute())
    t.on_client(S, None)
    done = t.on_server(ord("E"), b"C42703\0Mcolumn x does not exist\0\0")
    assert done == [b, c] and b.error.startswith("42703") and "not executed" in c.error
    assert t.on_server(ord("Z"), b"I") == [] and t.idle


def test_tracker_asks_for_a_barrier_when_an_earlier_segment_decides_the_text():
    t = StatementTracker()
    t.on_client(P, _parse("s1", "SELECT 'new'"))
    t.on_client(S, None)
    assert t.needs_barrier(B, _bind("", "s1"))  # the Parse may fail: wait for its answer
    t.on_server(ord("1"), None)
    t.on_server(ord("Z"), b"I")
    assert not t.needs_barrier(B, _bind("", "s1"))
    # A second Parse of an existing name is predicted to fail: the original text stays.
    t.on_client(P, _parse("s1", "SELECT 'decoy'"))
    assert t.needs_barrier(B, _bind("", "s1"))
    t.on_server(ord("E"), b"C42P05\0Mprepared statement \"s1\" already exists\0\0")
    t.on_client(S, None)
    t.on_server(ord("Z"), b"I")
    t.on_client(B, _bind("", "s1"))
    assert t.on_client(E, _execute()).text == "SELECT 'new'"


def test_tracker_sql_prepare_makes_names_unknown():
    t = StatementTracker()
    t.on_client(P, _parse("s1", "SELECT 1"))
    t.on_client(S, None)
    t.on_server(ord("1"), None)
    t.on_server(ord("Z"), b"I")
    t.on_client(Q, b"DEALLOCATE s1; PREPARE s1 AS SELECT 'sql'\0")
    t.on_server(ord("C"), b"DEALLOCATE\0")
    t.on_server(ord("C"), b"PREPARE\0")
    t.on_server(ord("Z"), b"I")
    t.on_client(B, _bind("", "s1"))
    assert t.on_client(E, _execute()).text == UNKNOWN_TEXT


@pytest.mark.parametrize("sql, taints", [
    ("Discard ALL", True), ("close c1", True), ("DECLARE c CURSOR FOR SELECT 1", True),
    ("deallocate s1", True), ("PrePare s2 AS SELECT 1", True),
    ("SELECT preparedness, closed FROM t", False), ("SELECT 1", False)])
def test_tracker_sql_namespace_words_in_any_case(sql, taints):
    t = StatementTracker()
    t.on_client(P, _parse("s1", "SELECT 1"))
    t.on_client(S, None)
    t.on_server(ord("1"), None)
    t.on_server(ord("Z"), b"I")
    t.on_client(Q, sql.encode() + b"\0")
    t.on_server(ord("C"), b"SELECT 1\0")
    t.on_server(ord("Z"), b"I")
    t.on_client(B, _bind("", "s1"))
    assert (t.on_client(E, _execute()).text == UNKNOWN_TEXT) is taints


def test_tracker_refuses_answers_that_fit_no_request():
    t = StatementTracker()
    t.on_client(P, _parse("", "SELECT 1"))
    with pytest.raises(TrackerDesync):
        t.on_server(ord("2"), None)


# ---- upstream auth -----------------------------------------------------------------------------------


def test_scram_rfc7677_vector():
    client = ScramClient(nonce="rOprNGfwEbeRWgbNEkqO", username="user")
    assert client.initial() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = client.final(server_first, lambda: b"pencil")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert client.done


def test_scram_rejects_a_forged_server_signature_and_a_foreign_nonce():
    client = ScramClient(nonce="abc")
    client.final(b"r=abcdef,s=c2FsdA==,i=4096", lambda: b"pw")
    with pytest.raises(UpstreamLoginError, match="server signature is invalid"):
        client.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    with pytest.raises(UpstreamLoginError, match="nonce"):
        ScramClient(nonce="abc").final(b"r=xyz123,s=c2FsdA==,i=4096", lambda: b"pw")


RFC_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_cache_holds_derived_keys_only():
    cache = ScramKeyCache()
    calls = []

    def secret():
        calls.append(1)
        return b"pencil"

    for _ in range(3):
        c = ScramClient(cache=cache, cache_scope=("ds", "cred", 1), nonce="rOprNGfwEbeRWgbNEkqO", username="user")
        c.final(RFC_FIRST, secret)
        c.verify(RFC_FINAL)
    assert len(calls) == 1 and cache.hits == 2
    assert b"pencil" not in repr(cache._data).encode()


def test_scram_keys_are_cached_only_once_the_server_proved_itself():
    """A server that never sends (or forges) its signature leaves nothing in the cache: otherwise a
    hostile upstream could fill it with entries of its own making."""
    cache = ScramKeyCache()
    for _ in range(3):
        c = ScramClient(cache=cache, cache_scope=("ds", "cred", 1), nonce="rOprNGfwEbeRWgbNEkqO", username="user")
        c.final(RFC_FIRST, lambda: b"pencil")
    assert cache.hits == 0 and not cache._data
    with pytest.raises(UpstreamLoginError, match="salt of 300 bytes"):
        ScramClient(nonce="abc").final(b"r=abcdef,s=" + base64.b64encode(b"s" * 300) + b",i=4096", lambda: b"pw")


def test_auth_refuses_a_second_method_or_a_request_after_ok():
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    auth.step(struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
    for second in (struct.pack("!i", 5) + b"salt", struct.pack("!i", 3), struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"):
        with pytest.raises(ServerProtocolError, match="switched authentication method"):
            auth.step(second)
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    auth.step(struct.pack("!i", 5) + b"salt")
    with pytest.raises(ServerProtocolError, match="switched"):
        auth.step(struct.pack("!i", 5) + b"salt")
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    auth.step(struct.pack("!i", 0))
    with pytest.raises(ServerProtocolError, match="after AuthenticationOk"):
        auth.step(struct.pack("!i", 5) + b"salt")


def test_auth_refuses_ok_before_scram_proof_and_unsupported_methods():
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    auth.step(struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
    with pytest.raises(UpstreamLoginError, match="without proving"):
        auth.step(struct.pack("!i", 0))
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    with pytest.raises(UpstreamLoginError, match="GSSAPI"):
        auth.step(struct.pack("!i", 7))
    auth = UpstreamAuthenticator(user="u", secret_fn=lambda: b"pw", cache=None, cache_scope=())
    with pytest.raises(UpstreamLoginError, match="SCRAM-SHA-256-PLUS"):
        auth.step(struct.pack("!i", 10) + b"SCRAM-SHA-256-PLUS\0\0")


def test_md5_and_saslprep():
    # md5 of md5("secret" + "alice") + salt, as PostgreSQL computes it.
    import hashlib
    inner = hashlib.md5(b"secretalice").hexdigest().encode()
    assert md5_password(b"secret", "alice", b"abcd") == b"md5" + hashlib.md5(inner + b"abcd").hexdigest().encode()
    assert saslprep(b"pencil") == b"pencil"
    assert saslprep("I\u00adX".encode()) == b"IX"  # soft hyphen maps to nothing
    assert saslprep("a\u2002b".encode()) == b"a b"  # non-ASCII space maps to space
    assert saslprep(b"\xff\xfe") == b"\xff\xfe"  # not UTF-8: raw bytes, as PostgreSQL does


# ---- sqlcommenter ------------------------------------------------------------------------------------


def test_parse_tags_takes_only_ascii_digits_for_the_execution_count():
    # "²".isdigit() is True but int("²") raises: such a tag ended the client's session.
    assert parse_tags("SELECT 1 /*sdm_execution_count='%C2%B2'*/") == {"execution_count": None}
    assert parse_tags("SELECT 1 /*sdm_execution_count='%D9%A3'*/") == {"execution_count": None}


def test_parse_tags():
    sql = "SELECT 1 /*sdm_cell='c%201',sdm_notebook='a%2Fb.ipynb',sdm_kernel='k',sdm_execution_count='12'*/"
    assert parse_tags(sql) == {"cell_id": "c 1", "notebook": "a/b.ipynb", "kernel_id": "k", "execution_count": 12}
    assert parse_tags("SELECT 1 /* plain comment */") == {}
    assert parse_tags("SELECT 1 /*sdm_execution_count='x',other='y'*/") == {"execution_count": None}
    assert parse_tags("SELECT 1 /*sdm_cell='it\\'s'*/") == {"cell_id": "it's"}
