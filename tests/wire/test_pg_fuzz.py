"""Malformed, truncated, oversized and out-of-order input over real sockets (hypothesis).

Each example opens a connection, sends bytes, half-closes and reads what comes back. The gateway
must answer with nothing, a single SSL/GSS answer byte, an authentication request or a well-formed
ErrorResponse (08P01, 0A000, 28000, 28P01, 54000...), then close that one connection. After every
example run, a normal client still works.
"""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdm_proxy.wire.postgres import framing
from sdm_proxy.wire.postgres.errors import ClientProtocolError

from tests.wire import pgraw
from tests.wire.stack import DATASOURCE

pytestmark = pytest.mark.postgres

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALLOWED_STATES = {"08P01", "0A000", "28000", "28P01", "54000", "57P03", "08006"}


def _exchange(gateway, data: bytes, *, after_login: bool = False) -> list[tuple[bytes, bytes]]:
    if after_login:
        msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database=DATASOURCE,
                                 password=gateway.tokens["ann"])
        assert msgs[-1][0] == b"Z"
    else:
        sock = pgraw.connect(gateway.host, gateway.port)
    sock.settimeout(15)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the gateway may already have hung up on a bad prefix
    chunks = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks += chunk
    sock.close()
    return chunks


def _check_pre_auth_answer(raw: bytes) -> None:
    """Only these answers are legal before a login: S/N bytes, auth requests, ErrorResponses."""
    off = 0
    while off < len(raw):
        if raw[off:off + 1] in (b"N", b"S") and (off + 1 == len(raw) or raw[off + 1:off + 2] in (b"N", b"S", b"E", b"R", b"v")):
            off += 1
            continue
        t = raw[off:off + 1]
        assert t in (b"E", b"R", b"v"), f"unexpected answer {raw[off:off + 20]!r}"
        (length,) = struct.unpack("!i", raw[off + 1:off + 5])
        payload = raw[off + 5:off + 1 + length]
        assert len(payload) == length - 4, "truncated answer"
        if t == b"E":
            fields = pgraw.error_fields(payload)
            assert fields["S"] == "FATAL" and fields["C"] in ALLOWED_STATES, fields
            assert off + 1 + length == len(raw), "nothing after the FATAL"
        off += 1 + length


def _assert_gateway_serves(gateway) -> None:
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


# ---- pure framing ----------------------------------------------------------------------------------


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_framing_never_raises_anything_but_client_errors(data):
    try:
        if len(data) >= 4:
            framing.parse_startup_packet(data)
    except ClientProtocolError:
        pass
    splitter = framing.MessageSplitter(full="QPECD", observe="SHX", prefix={"B": 64, "F": 64}, max_full=1 << 16)
    try:
        msgs, fwd = splitter.feed(data)
        assert len(fwd) + splitter.buffered == len(data)  # every byte is either passed on or held
    except ClientProtocolError:
        pass


# ---- the startup path over a real socket -----------------------------------------------------------

startup_params = st.dictionaries(st.sampled_from(["user", "database", "application_name", "options", "replication",
                                                  "_pq_.ext", "client_encoding", "x"]),
                                 st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=20),
                                 max_size=5)


@st.composite
def startup_sequences(draw):
    """Sequences of startup-phase packets, some well formed, some not, in any order."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["ssl", "gss", "cancel", "startup", "bad_version", "garbage", "truncated",
                                     "oversized", "password", "regular"]))
        if kind == "ssl":
            parts.append(struct.pack("!ii", 8, 80877103))
        elif kind == "gss":
            parts.append(struct.pack("!ii", 8, 80877104))
        elif kind == "cancel":
            parts.append(struct.pack("!iiii", 16, 80877102, draw(st.integers(0, 2**31 - 1)),
                                     draw(st.integers(-2**31, 2**31 - 1))))
        elif kind == "startup":
            parts.append(pgraw.startup_packet(draw(startup_params), version=(3 << 16) | draw(st.integers(0, 3))))
        elif kind == "bad_version":
            parts.append(pgraw.startup_packet({"user": "u"}, version=draw(st.integers(0, 2**31 - 1))))
        elif kind == "garbage":
            parts.append(draw(st.binary(min_size=1, max_size=64)))
        elif kind == "truncated":
            pkt = pgraw.startup_packet(draw(startup_params))
            parts.append(pkt[:draw(st.integers(1, len(pkt) - 1))])
        elif kind == "oversized":
            parts.append(struct.pack("!ii", draw(st.integers(10_001, 2**31 - 1)), 196608))
        elif kind == "password":
            parts.append(pgraw.message(b"p", draw(st.binary(max_size=40))))
        else:
            parts.append(pgraw.message(draw(st.sampled_from([b"Q", b"X", b"P", b"S", b"\x00"])),
                                       draw(st.binary(max_size=40))))
    return b"".join(parts)


@given(startup_sequences())
@FUZZ
def test_startup_path_fuzz(gateway, data):
    raw = _exchange(gateway, data)
    _check_pre_auth_answer(raw)


def test_gateway_serves_after_startup_fuzz(gateway):
    _assert_gateway_serves(gateway)


@pytest.mark.parametrize("data,state", [
    (struct.pack("!ii", 10_001, 196608), "08P01"),
    (struct.pack("!i", 7), "08P01"),
    (pgraw.startup_packet({"user": "u"}, version=2 << 16), "0A000"),
    (pgraw.startup_packet({"user": "u", "database": "d"})[:-3], "08P01"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "08P01"),
    (pgraw.startup_packet({"user": "u", "database": "d"}) + pgraw.message(b"Q", b"SELECT 1\0"), "08P01"),
    (pgraw.startup_packet({"user": "u", "database": "d"}) + b"p" + struct.pack("!i", 1 << 30), "08P01"),
])
def test_specific_bad_startups_get_native_errors(gateway, data, state):
    raw = _exchange(gateway, data)
    _check_pre_auth_answer(raw)
    fields = pgraw.error_fields(raw[raw.index(b"E") + 5:])
    assert fields["C"] == state


def test_a_bad_startup_is_audited_as_denied(gateway):
    _exchange(gateway, pgraw.startup_packet({"user": "fuzz-user", "database": "fuzz-db"}, version=2 << 16))
    gateway.wait_for(lambda: [e for e in gateway.events("access.denied") if e["error"]
                              and "unsupported frontend protocol" in e["error"]], what="access.denied")


# ---- after the login: the relay's framing -------------------------------------------------------------

relay_messages = st.lists(st.tuples(st.sampled_from([b"Q", b"P", b"B", b"E", b"D", b"C", b"S", b"H", b"F", b"d",
                                                     b"c", b"f", b"p", b"\x00", b"z"]),
                                    st.binary(max_size=60)), min_size=1, max_size=8)


@given(relay_messages, st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_relay_fuzz(gateway, messages, bad_length):
    data = b"".join(pgraw.message(t, body) for t, body in messages)
    if bad_length:
        data += b"Q" + struct.pack("!I", 0x7FFFFFF0)
    raw = _exchange(gateway, data, after_login=True)
    # Whatever came back is a stream of well-formed server messages (the DB's errors, or ours).
    off = 0
    while off + 5 <= len(raw):
        (length,) = struct.unpack("!i", raw[off + 1:off + 5])
        assert length >= 4
        off += 1 + length
    assert off == len(raw), "the answer ends on a message boundary"


def test_gateway_serves_after_relay_fuzz(gateway):
    _assert_gateway_serves(gateway)


def test_oversized_statement_after_login_is_refused_without_buffering(gateway):
    raw = _exchange(gateway, b"Q" + struct.pack("!I", 0x3FFFFFFF) + b"SELECT", after_login=True)
    fields = pgraw.error_fields(raw[raw.rindex(b"E") + 5:])
    assert fields["C"] == "54000" and fields["S"] == "FATAL"
    _assert_gateway_serves(gateway)
