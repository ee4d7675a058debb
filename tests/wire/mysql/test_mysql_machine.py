"""The front connection: the transition table and FrontConnection's sans-I/O login and command flow."""

from __future__ import annotations

import itertools
import ssl

import pytest
from sdm_proxy import errors as sdm_errors
from sdm_proxy.wire.mysql.commands import classify
from sdm_proxy.wire.mysql.errors import (
    ClientProtocolError,
    CommandRefused,
    InsecureTransport,
    ServerProtocolError,
)
from sdm_proxy.wire.mysql.machine import (
    TRANSITIONS,
    Action,
    CommandReceived,
    FrontConnection,
    FrontMachine,
    Input,
    LoginRequest,
    Phase,
    StartTLS,
)
from sdm_proxy.wire.mysql.messages import (
    CLEAR_PASSWORD,
    NATIVE_PASSWORD,
    Cap,
    OkPacket,
    build_handshake_response,
    build_ssl_request,
    parse_auth_reply,
    parse_err,
    parse_handshake,
)
from sdm_proxy.wire.mysql.packets import PacketReader, frame

TOKEN = "sdm_session_token_0123456789"
CLIENT_CAPS = int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
                  | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS | Cap.DEPRECATE_EOF | Cap.MULTI_RESULTS
                  | Cap.TRANSACTIONS | Cap.LONG_PASSWORD | Cap.FOUND_ROWS | Cap.QUERY_ATTRIBUTES)


def _hello(caps=CLIENT_CAPS, *, user="read-only", db="prod-db", plugin=NATIVE_PASSWORD, auth=b"\x11" * 20):
    return build_handshake_response(capabilities=caps, username=user, auth_response=auth, database=db,
                                    auth_plugin=plugin, attrs={"_client_name": "test"}, charset=224)


def _server_packets(data: bytes, expect_seq: int) -> list:
    reader = PacketReader(limit=1 << 20, error=ServerProtocolError, expect_seq=expect_seq)
    reader.feed(data)
    out = []
    while (p := reader.next_packet()) is not None:
        out.append(p)
    return out


def _login(front: FrontConnection, *, hello_seq=1) -> LoginRequest:
    front.data_to_send()  # the greeting, if still queued
    front.receive_data(frame(_hello(), hello_seq))
    assert front.next_event() is None and front.phase is Phase.AUTH_SWITCH_SENT
    [switch] = _server_packets(front.data_to_send(), hello_seq + 1)
    assert switch.payload.startswith(b"\xfemysql_clear_password\0")
    front.receive_data(frame(TOKEN.encode() + b"\0", hello_seq + 2))
    event = front.next_event()
    assert isinstance(event, LoginRequest)
    return event


# ---- the table ---------------------------------------------------------------------------------


def test_every_live_phase_can_fail_or_quit():
    for phase in (Phase.HANDSHAKE_SENT, Phase.TLS_HANDSHAKE, Phase.TLS_READY, Phase.AUTH_SWITCH_SENT,
                  Phase.LOGIN, Phase.COMMAND):
        assert TRANSITIONS[(phase, Input.FAIL)] == (Phase.CLOSING, Action.SEND_ERR)
        assert TRANSITIONS[(phase, Input.QUIT)] == (Phase.CLOSED, Action.CLOSE)


def test_out_of_order_inputs_raise():
    for phase, event in itertools.product(Phase, Input):
        m = FrontMachine(phase)
        if (phase, event) in TRANSITIONS:
            m.advance(event)
        else:
            with pytest.raises(ClientProtocolError, match="unexpected"):
                m.advance(event)
            assert m.phase is phase


# ---- FrontConnection -----------------------------------------------------------------------------


def test_greeting():
    front = FrontConnection(connection_id=77, tls_available=True, tls_required=False)
    [packet] = _server_packets(front.data_to_send(), 0)
    hs = parse_handshake(packet.payload)
    assert hs.connection_id == 77 and hs.scramble == front.scramble and hs.capabilities & Cap.SSL
    assert not hs.capabilities & Cap.COMPRESS
    assert not parse_handshake(_server_packets(
        FrontConnection(connection_id=1, tls_available=False, tls_required=False).data_to_send(), 0)[0].payload
    ).capabilities & Cap.SSL
    with pytest.raises(ValueError):
        FrontConnection(connection_id=1, tls_available=False, tls_required=True)


def test_plain_login_then_commands():
    front = FrontConnection(connection_id=5, tls_available=False, tls_required=False)
    front.data_to_send()
    req = _login(front)
    assert (req.credential, req.datasource, req.token, req.charset) == ("read-only", "prod-db", TOKEN, 224)
    assert req.attrs == {"_client_name": "test"} and not req.change_user
    assert TOKEN not in repr(req) and TOKEN not in repr(front)
    # Negotiated: the client's flags that the gateway offers (QUERY_ATTRIBUTES is not offered).
    assert req.capabilities & Cap.DEPRECATE_EOF and not req.capabilities & Cap.QUERY_ATTRIBUTES
    assert front.phase is Phase.LOGIN and front.next_event() is None
    front.login_succeeded(status=0x0002)
    [ok] = _server_packets(front.data_to_send(), 4)
    assert isinstance(parse_auth_reply(ok.payload), OkPacket) and front.phase is Phase.COMMAND
    for _ in range(2):  # each command restarts at sequence id 0
        front.receive_data(frame(b"\x03SELECT 1", 0))
        event = front.next_event()
        assert isinstance(event, CommandReceived) and event.packet.payload == b"\x03SELECT 1"
        assert event.packet.next_seq == 1


def test_pipelined_commands_are_each_read_at_seq_zero():
    front = FrontConnection(connection_id=5, tls_available=False, tls_required=False)
    _login(front)
    front.login_succeeded()
    front.receive_data(frame(b"\x0e", 0) + frame(b"\x03SELECT 2", 0))
    assert front.next_event().packet.payload == b"\x0e"
    assert front.next_event().packet.payload == b"\x03SELECT 2"


def test_client_sending_clear_password_directly():
    front = FrontConnection(connection_id=5, tls_available=False, tls_required=False)
    front.data_to_send()
    front.receive_data(frame(_hello(plugin=CLEAR_PASSWORD, auth=TOKEN.encode() + b"\0"), 1))
    req = front.next_event()
    assert isinstance(req, LoginRequest) and req.token == TOKEN and front.data_to_send() == b""
    front.login_succeeded()
    assert _server_packets(front.data_to_send(), 2)


def test_tls_flow_with_pipelined_client_hello():
    front = FrontConnection(connection_id=9, tls_available=True, tls_required=True)
    front.data_to_send()
    client_hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"
    front.receive_data(frame(build_ssl_request(capabilities=CLIENT_CAPS), 1) + client_hello_start)
    event = front.next_event()
    assert isinstance(event, StartTLS) and event.pending == client_hello_start
    assert "\\x16" not in repr(event)
    with pytest.raises(ClientProtocolError):
        front.receive_data(b"more")  # nothing may be parsed as MySQL until TLS is up
    front.tls_established()
    req = _login(front, hello_seq=2)
    assert req.credential == "read-only" and front.tls_active


def test_tls_required_refuses_plain_login():
    front = FrontConnection(connection_id=9, tls_available=True, tls_required=True)
    front.data_to_send()
    front.receive_data(frame(_hello(), 1))
    with pytest.raises(InsecureTransport) as info:
        front.next_event()
    front.fail(info.value)
    [packet] = _server_packets(front.data_to_send(), 2)
    err = parse_err(packet.payload)
    assert (err.code, err.sqlstate) == (3159, "HY000") and front.phase is Phase.CLOSING
    front.closed()
    assert front.phase is Phase.CLOSED


@pytest.mark.parametrize("hello, message", [
    (_hello(CLIENT_CAPS | Cap.COMPRESS), "compressed"),
    (_hello(CLIENT_CAPS | Cap.SSL), "without an SSL request"),
    (_hello(CLIENT_CAPS & ~Cap.PLUGIN_AUTH), "CLIENT_PLUGIN_AUTH"),
])
def test_refused_hellos(hello, message):
    front = FrontConnection(connection_id=1, tls_available=True, tls_required=False)
    front.receive_data(frame(hello, 1))
    with pytest.raises(ClientProtocolError, match=message):
        front.next_event()


def test_ssl_request_without_tls_and_twice():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    front.receive_data(frame(build_ssl_request(capabilities=CLIENT_CAPS), 1))
    with pytest.raises(ClientProtocolError, match="TLS is not available"):
        front.next_event()
    front = FrontConnection(connection_id=1, tls_available=True, tls_required=False)
    front.receive_data(frame(build_ssl_request(capabilities=CLIENT_CAPS), 1))
    front.next_event()
    front.tls_established()
    front.receive_data(frame(build_ssl_request(capabilities=CLIENT_CAPS), 2))
    with pytest.raises(ClientProtocolError):
        front.next_event()


def test_wrong_sequence_and_oversized_handshake():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    front.receive_data(frame(_hello(), 0))
    with pytest.raises(ClientProtocolError) as info:
        front.next_event()
    assert info.value.code == 1156
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    front.receive_data(b"\x00\x00\x10\x01")  # announces 1 MiB during the handshake
    with pytest.raises(ClientProtocolError) as info:
        front.next_event()
    assert info.value.code == 1153


def test_pre_41_client_gets_an_err_it_can_read():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    front.data_to_send()
    front.receive_data(frame(b"\x85\x44\x03\x00\x00\x00\x00\x01\x08" + b"\0" * 23 + b"u\0", 1))
    with pytest.raises(ClientProtocolError) as info:
        front.next_event()
    front.fail(info.value)
    [packet] = _server_packets(front.data_to_send(), 2)
    assert packet.payload[3:4] != b"#"


def test_denied_login_err():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    front.data_to_send()
    _login(front)
    front.fail(sdm_errors.AuthenticationFailed("invalid or expired session token"))
    [packet] = _server_packets(front.data_to_send(), 4)
    err = parse_err(packet.payload)
    assert (err.code, err.sqlstate) == (1045, "28000") and TOKEN not in err.message
    front.fail(RuntimeError("again"))  # already closing: no second ERR
    assert front.data_to_send() == b""


def test_refused_command_keeps_the_connection():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    _login(front)
    front.login_succeeded()
    front.data_to_send()
    front.receive_data(frame(b"\x12binlog", 0))
    event = front.next_event()
    with pytest.raises(CommandRefused) as info:
        classify(event.packet.payload, capabilities=front.capabilities)
    front.reply_error(info.value, event.packet)
    [packet] = _server_packets(front.data_to_send(), 1)
    assert parse_err(packet.payload).code == 1047 and front.phase is Phase.COMMAND


def test_change_user_flow():
    front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
    _login(front)
    front.login_succeeded()
    front.data_to_send()
    payload = b"\x11superuser\0\x00other-db\0\x21\x00mysql_native_password\0"
    front.receive_data(frame(payload, 0))
    event = front.next_event()
    cmd = classify(event.packet.payload, capabilities=front.capabilities)
    front.change_user(cmd, event.packet)
    [switch] = _server_packets(front.data_to_send(), 1)
    assert switch.payload.startswith(b"\xfemysql_clear_password")
    front.receive_data(frame(b"tok2\0", 2))
    req = front.next_event()
    assert isinstance(req, LoginRequest) and req.change_user
    assert (req.credential, req.datasource, req.token, req.charset) == ("superuser", "other-db", "tok2", 0x21)
    front.login_succeeded()
    [ok] = _server_packets(front.data_to_send(), 3)
    assert ok.payload[0] == 0 and front.phase is Phase.COMMAND


def test_token_packet_too_long_or_binary():
    for bad in (b"t" * 5000 + b"\0", b"\xff\xfe\0"):
        front = FrontConnection(connection_id=1, tls_available=False, tls_required=False)
        front.receive_data(frame(_hello(), 1))
        front.next_event()
        front.receive_data(frame(bad, 3))
        with pytest.raises(ClientProtocolError):
            front.next_event()


def test_tls_session_rejects_plaintext():
    from sdm_proxy.wire.mysql.tlsbio import TLSServerSession

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ClientProtocolError, match="TLS handshake"):
        TLSServerSession(ctx, b"\x03SELECT 1 -- not a ClientHello").start()
