"""Property-based fuzzing of every parser that sees peer bytes.

The contract: whatever arrives (random, truncated, oversized, split anywhere), a parser either works
or raises one of the wire layer's own error types, never IndexError / struct.error /
UnicodeDecodeError / ValueError / AssertionError. Valid input split at random points must parse
exactly as when it arrives whole.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdm_proxy.wire.mysql.auth import UpstreamAuth, UpstreamLogin
from sdm_proxy.wire.mysql.commands import ResponseKind, ResponseScanner, classify
from sdm_proxy.wire.mysql.errors import (
    ClientProtocolError,
    CommandRefused,
    InsecureTransport,
    ServerProtocolError,
)
from sdm_proxy.wire.mysql.kill import UnsupportedKill, parse_kill
from sdm_proxy.wire.mysql.machine import CommandReceived, FrontConnection, LoginRequest
from sdm_proxy.wire.mysql.messages import (
    CACHING_SHA2,
    NATIVE_PASSWORD,
    Cap,
    build_handshake_response,
    front_capabilities,
    parse_auth_reply,
    parse_change_user,
    parse_clear_password,
    parse_client_hello,
    parse_handshake,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_FRAME,
    PacketReader,
    PayloadReader,
    frame,
    frame_packets,
    lenenc_int,
)

from tests.wire.mysql.fuzz_support import CAPS, CLIENT_ERRORS, FUZZ, SERVER_ERRORS
from tests.wire.mysql.fuzz_support import chunks as _chunks
from tests.wire.mysql.mysql_wire_builders import (
    framed,
)

# ---- framing -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=8),
       limit=st.integers(0, 1 << 25), seq=st.one_of(st.none(), st.integers(0, 255)))
def test_packet_reader_random_bytes(data, cuts, limit, seq):
    reader = PacketReader(limit=limit, expect_seq=seq)
    try:
        for chunk in _chunks(data, cuts):
            reader.feed(chunk)
            while (p := reader.next_packet()) is not None:
                assert len(p.payload) <= limit
    except CLIENT_ERRORS:
        pass


@FUZZ
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6), start=st.integers(0, 255),
       cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_packet_reader_reassembles_any_split(payloads, start, cuts):
    data, seq = b"", start
    for p in payloads:
        chunk, seq = frame_packets(p, seq)
        data += chunk
    reader = PacketReader(limit=1000, expect_seq=start)
    got = []
    for chunk in _chunks(data, cuts):
        reader.feed(chunk)
        while (p := reader.next_packet()) is not None:
            got.append(p.payload)
    assert got == payloads and reader.buffered == 0


@FUZZ
@given(length=st.integers(1001, MAX_FRAME), seq=st.integers(0, 255))
def test_oversized_header_rejected_without_body(length, seq):
    reader = PacketReader(limit=1000, expect_seq=None)
    reader.feed(length.to_bytes(3, "little") + bytes([seq]))
    try:
        reader.next_packet()
    except ClientProtocolError as exc:
        assert exc.code == 1153
    else:
        raise AssertionError("oversized frame accepted")


@FUZZ
@given(value=st.integers(0, (1 << 64) - 1), junk=st.binary(max_size=20))
def test_lenenc_round_trip(value, junk):
    r = PayloadReader(lenenc_int(value) + junk)
    assert r.lenenc_int() == value and r.rest() == junk


@FUZZ
@given(data=st.binary(max_size=64))
def test_payload_reader_random(data):
    r = PayloadReader(data)
    try:
        while not r.at_end:
            r.lenenc_bytes()
            r.cstring()
    except ClientProtocolError:
        pass


# ---- handshake and auth parsers -----------------------------------------------------------------


@st.composite
def hellos(draw):
    caps = draw(st.integers(0, 0xFFFFFFFF)) | int(Cap.PROTOCOL_41)
    caps &= ~int(Cap.SSL)
    auth = draw(st.binary(max_size=260 if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA else 255))
    if not caps & (Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.SECURE_CONNECTION):
        auth = auth.replace(b"\0", b"")
    text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
    return build_handshake_response(
        capabilities=caps, username=draw(text), auth_response=auth, database=draw(text) or None,
        auth_plugin=draw(st.sampled_from([NATIVE_PASSWORD, "mysql_clear_password", ""])),
        attrs=draw(st.dictionaries(text, text, max_size=3)), charset=draw(st.integers(0, 255)))


@FUZZ
@given(hello=hellos(), cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                                                max_size=4))
def test_client_hello_mutations(hello, cut, flips):
    parsed = parse_client_hello(hello)  # the unmutated one always parses
    assert parsed.capabilities & Cap.PROTOCOL_41
    mutated = bytearray(hello[:cut])
    for pos, value in flips:
        if mutated:
            mutated[pos % len(mutated)] = value
    try:
        parse_client_hello(bytes(mutated))
    except CLIENT_ERRORS:
        pass


@FUZZ
@given(data=st.binary(max_size=600))
def test_client_hello_and_change_user_random(data):
    for fn in (parse_client_hello, lambda d: parse_change_user(b"\x11" + d, CAPS), parse_clear_password):
        try:
            fn(data)
        except CLIENT_ERRORS:
            pass


@FUZZ
@given(data=st.binary(max_size=300))
def test_server_greeting_and_auth_replies_random(data):
    for payload in (data, b"\x0a" + data, b"\xfe" + data, b"\x01" + data, b"\xff" + data):
        for fn in (parse_handshake, parse_auth_reply):
            try:
                fn(payload)
            except SERVER_ERRORS:
                pass


@FUZZ
@given(plugin=st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2, "sha256_password"]), secure=st.booleans(),
       replies=st.lists(st.binary(max_size=80), max_size=4), prefix=st.sampled_from([b"", b"\x01", b"\xfe", b"\x00"]))
def test_upstream_auth_random_replies(plugin, secure, replies, prefix):
    auth = UpstreamAuth(secure=secure, allow_public_key_request=True)
    try:
        auth.start(plugin, b"n" * 20, lambda: b"pw")
        for r in replies:
            auth.step(prefix + r, lambda: b"pw")
    except SERVER_ERRORS:
        pass


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_upstream_login_random_stream(data, cuts):
    login = UpstreamLogin(username="u", database="d", front_capabilities=CAPS, tls="prefer")
    try:
        for chunk in _chunks(frame(b"\x0a" + data, 0) + data, cuts):
            step = login.receive_data(chunk, lambda: b"pw")
            if step.start_tls or step.done:
                break
    except SERVER_ERRORS:
        pass


# ---- the front connection ----------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=800), cuts=st.lists(st.integers(0, 800), max_size=6), tls=st.booleans(),
       framed_first=st.booleans())
def test_front_connection_random_input(data, cuts, tls, framed_first):
    front = FrontConnection(connection_id=1, tls_available=tls, tls_required=False)
    stream = frame(data, 1) + data if framed_first else data
    try:
        for chunk in _chunks(stream, cuts):
            front.receive_data(chunk)
            while (event := front.next_event()) is not None:
                if isinstance(event, LoginRequest):
                    front.login_succeeded()
                elif isinstance(event, CommandReceived):
                    try:
                        classify(event.packet.payload, capabilities=front.capabilities)
                    except CommandRefused:
                        pass
                else:  # StartTLS: stop here, like the glue hands over to TLS
                    return
            front.data_to_send()
    except (ClientProtocolError, InsecureTransport):
        pass


# ---- commands ----------------------------------------------------------------------------------


@FUZZ
@given(code=st.integers(0, 255), body=st.binary(max_size=200), multi=st.booleans())
def test_classify_random(code, body, multi):
    try:
        cmd = classify(bytes([code]) + body, capabilities=CAPS, multi_statements_allowed=multi)
    except (ClientProtocolError, CommandRefused):
        return
    assert cmd.code == code and isinstance(cmd.describe(), str)


@FUZZ
@given(sql=st.text(max_size=120))
def test_parse_kill_random(sql):
    try:
        parse_kill(sql)
    except UnsupportedKill:
        pass


@FUZZ
@given(words=st.lists(st.sampled_from(["KILL", "kill", "QUERY", "CONNECTION", "HARD", "5", "@x", ";", "/*", "*/",
                                       "/*!", "--", "\n", "#", "'", "`", "ID", "USER", "1e3", " "]), max_size=8))
def test_parse_kill_token_soup(words):
    try:
        parse_kill(" ".join(words))
    except UnsupportedKill:
        pass


# ---- structured garbage: well-framed packets with hostile bodies (reaches the deeper parsers) -----

_HEADS = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF])
_PACKETS = st.lists(st.tuples(_HEADS, st.binary(max_size=24)).map(lambda t: bytes([t[0]]) + t[1]),
                    min_size=1, max_size=12)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([k for k in ResponseKind if k is not ResponseKind.NONE]), packets=_PACKETS,
       deprecate=st.booleans(), seq=st.integers(0, 255), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_scanner_structured_garbage(kind, packets, deprecate, seq, cuts):
    caps = (CAPS if deprecate else CAPS & ~Cap.DEPRECATE_EOF) | int(Cap.LOCAL_FILES)
    scanner = ResponseScanner(kind, capabilities=caps, seq=seq)
    try:
        for chunk in _chunks(framed(packets, seq), cuts):
            used = scanner.feed(chunk)
            if scanner.wants_client_data:
                scanner.feed_client(frame(b"", scanner.next_seq))
                used += scanner.feed(chunk[used:])
            if scanner.done or used < len(chunk):
                break
    except (ServerProtocolError, ClientProtocolError):
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=_PACKETS, tls=st.booleans())
def test_front_structured_garbage(packets, tls):
    front = FrontConnection(connection_id=1, tls_available=tls, tls_required=False)
    try:
        for payload in packets:
            front.receive_data(frame(payload, front._reader.expect_seq or 0))
            while (event := front.next_event()) is not None:
                if isinstance(event, LoginRequest):
                    front.login_succeeded()
                elif not isinstance(event, CommandReceived):
                    return
    except (ClientProtocolError, InsecureTransport):
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=_PACKETS, secure=st.booleans(), plugin=st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2, "x"]))
def test_upstream_login_structured_garbage(packets, secure, plugin):
    from sdm_proxy.wire.mysql.messages import build_handshake

    caps = int(front_capabilities(tls=secure))
    login = UpstreamLogin(username="u", database="d", front_capabilities=CAPS, tls="prefer",
                          allow_public_key_request=True)
    greeting = frame(build_handshake(connection_id=1, scramble=b"s" * 20, capabilities=caps, auth_plugin=plugin), 0)
    try:
        step = login.receive_data(greeting, lambda: b"pw")
        if step.start_tls:
            step = login.tls_started(lambda: b"pw")
        seq = 2 + bool(login.tls_active)
        for payload in packets:
            if step.done:
                break
            step = login.receive_data(frame(payload, seq), lambda: b"pw")
            seq += 2
    except SERVER_ERRORS:
        pass
