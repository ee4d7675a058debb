"""Property-based fuzzing of the MySQL listener over real sockets (hypothesis).

Each example opens a connection, sends bytes (before or after a real login), half-closes and reads
everything that comes back. The gateway must answer only with whole, well-formed packets: before a
login, at most an AuthSwitchRequest and one final ERR with an allowed code; after a login, whatever
the database answers to commands that happen to parse, and ERR packets for the rest. After every
example, a normal client still works.
"""

from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdm_proxy.wire.mysql.messages import (
    CLEAR_PASSWORD,
    build_handshake_response,
    build_ssl_request,
)
from sdm_proxy.wire.mysql.packets import frame

from tests.wire.mysql import mysql_raw as raw
from tests.wire.mysql.mysql_stack import DATASOURCE

pytestmark = pytest.mark.mysql

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRE_LOGIN_CODES = {1043, 1045, 1153, 1156, 1158, 1251, 3159}


def _serves(gw) -> None:
    with gw.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 'alive'")
        assert cur.fetchone() == ("alive",)


def _check_packets(packets: list[tuple[int, bytes]], *, pre_login: bool) -> None:
    for i, (_seq, payload) in enumerate(packets):
        assert payload, "an empty packet from the gateway"
        if pre_login:
            if payload[0] == 0xFE:
                assert payload.startswith(b"\xfe" + CLEAR_PASSWORD.encode() + b"\0")
                continue
            if payload[0] == 0x00:  # a login that happened to succeed (it cannot: no valid token)
                raise AssertionError("a fuzzed login succeeded")
            assert payload[0] == 0xFF, payload[:20]
            code = struct.unpack_from("<H", payload, 1)[0]
            assert code in PRE_LOGIN_CODES, payload
            assert i == len(packets) - 1, "an ERR ends the conversation"
            # With a SQLSTATE, unless the "client" announced itself as pre-4.1 (then the ERR is too).
            assert payload[3:4] == b"#" or len(payload) > 3


usernames = st.sampled_from(["read-only", "superuser", "", "x" * 300, "réad-only", "read\x00only"])
databases = st.sampled_from([DATASOURCE, None, "nope", "ü" * 5])


@st.composite
def login_sequences(draw):
    """Pre-login input: hellos (well formed or not), SSL requests, tokens, garbage, bad framing."""
    parts = []
    seq = 1
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["hello", "hello_token", "ssl", "token", "garbage", "truncated", "oversized",
                                     "wrong_seq", "raw"]))
        if kind in ("hello", "hello_token", "truncated"):
            caps = draw(st.integers(0, 0xFFFFFFFF)) | raw.CLIENT_CAPS if draw(st.booleans()) else raw.CLIENT_CAPS
            caps &= ~0x800  # no SSL flag without a real TLS handshake (covered by the "ssl" kind)
            token = draw(st.sampled_from([b"sdms.bogus", b"", b"\xff\xfe", b"a" * 5000]))
            try:
                payload = build_handshake_response(
                    capabilities=caps, username=draw(usernames).replace("\x00", ""), database=draw(databases),
                    auth_response=token + b"\0" if kind == "hello_token" else draw(st.binary(max_size=30)),
                    auth_plugin=CLEAR_PASSWORD if kind == "hello_token" else draw(st.sampled_from(
                        ["mysql_native_password", "caching_sha2_password", "", "x"])),
                    attrs=draw(st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)))
            except ValueError:
                payload = draw(st.binary(max_size=60))
            if kind == "truncated":
                payload = payload[:draw(st.integers(0, max(0, len(payload) - 1)))]
            parts.append(frame(payload, seq))
        elif kind == "ssl":
            parts.append(frame(build_ssl_request(capabilities=raw.CLIENT_CAPS), seq))
        elif kind == "token":
            parts.append(frame(draw(st.binary(max_size=64)), seq))
        elif kind == "garbage":
            parts.append(draw(st.binary(min_size=1, max_size=64)))
        elif kind == "oversized":
            parts.append(b"\xff\xff\xff" + bytes((seq,)) + draw(st.binary(max_size=20)))
        elif kind == "wrong_seq":
            parts.append(frame(draw(st.binary(max_size=40)), draw(st.integers(0, 255))))
        else:
            parts.append(draw(st.binary(min_size=4, max_size=8)))
        seq = (seq + 2) & 0xFF
    return b"".join(parts)


@pytest.fixture
def no_internal_errors(caplog):
    """The gateway never logs an internal error (a traceback) for any of the examples."""
    caplog.set_level(logging.ERROR, logger="sdm.wire.mysql")
    yield
    bad = [r for r in caplog.records if r.name.startswith("sdm.wire.mysql") and r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def test_fuzzed_logins_get_clean_errors(mysql_gateway, no_internal_errors):
    gw = mysql_gateway  # a closure, not an argument: hypothesis would print the fixture's secrets

    @given(login_sequences())
    @FUZZ
    def example(data):
        sock, greeting = raw.connect(gw.host, gw.port)
        assert greeting[0] == 10
        _check_packets(raw.exchange(sock, data), pre_login=True)
        _serves(gw)

    example()


COMMANDS = [0x00, 0x01, 0x02, 0x03, 0x04, 0x09, 0x0A, 0x0C, 0x0E, 0x11, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C,
            0x1F, 0x12, 0x08, 0x20, 0xFF]


@st.composite
def command_sequences(draw):
    """Post-login input: commands with fuzzed bodies, some with broken framing or sequence ids."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["command", "command", "wrong_seq", "garbage", "truncated", "oversized"]))
        command = bytes((draw(st.sampled_from(COMMANDS)),))
        body = draw(st.binary(max_size=40) | st.sampled_from([b"SELECT 1", b"KILL QUERY 1", b"SELECT SLEEP(0)",
                                                               b"SHOW TABLES", b"\x01\x00\x00\x00"]))
        if kind == "command":
            parts.append(frame(command + body, 0))
        elif kind == "wrong_seq":
            parts.append(frame(command + body, draw(st.integers(1, 255))))
        elif kind == "garbage":
            parts.append(draw(st.binary(min_size=1, max_size=40)))
        elif kind == "truncated":
            data = frame(command + body, 0)
            parts.append(data[:draw(st.integers(1, len(data) - 1))])
        else:
            parts.append(b"\xff\xff\xff\x00" + command + body)
    return b"".join(parts)


def test_fuzzed_commands_after_login(mysql_gateway, no_internal_errors):
    gw = mysql_gateway

    @given(command_sequences())
    @FUZZ
    def example(data):
        sock = raw.login(gw.host, gw.port, "read-only", gw.tokens["ann"])
        _check_packets(raw.exchange(sock, data), pre_login=False)
        _serves(gw)

    example()
