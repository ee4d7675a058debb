"""Handshake, auth and OK/ERR/EOF packets: builders and parsers, round trips and refusals."""

from __future__ import annotations

import pytest
from sdm_proxy import errors as sdm_errors
from sdm_proxy.wire.mysql.errors import (
    ER_ACCESS_DENIED_ERROR,
    ER_NOT_SUPPORTED_AUTH_MODE,
    ClientProtocolError,
    ServerProtocolError,
    UpstreamLoginError,
    err_fields,
)
from sdm_proxy.wire.mysql.messages import (
    CLEAR_PASSWORD,
    MAX_TOKEN_LENGTH,
    NATIVE_PASSWORD,
    AuthMoreData,
    AuthSwitch,
    Cap,
    ErrPacket,
    HandshakeResponse,
    OkPacket,
    SSLRequest,
    Status,
    build_clear_password_switch,
    build_eof,
    build_err,
    build_err_for,
    build_handshake,
    build_handshake_response,
    build_ok,
    build_ssl_request,
    front_capabilities,
    new_scramble,
    parse_auth_reply,
    parse_change_user,
    parse_clear_password,
    parse_client_hello,
    parse_eof,
    parse_err,
    parse_handshake,
    parse_ok,
)
from sdm_proxy.wire.mysql.packets import lenenc_bytes


def _reencode(resp: HandshakeResponse) -> bytes:
    return build_handshake_response(capabilities=resp.capabilities, username=resp.username,
                                    auth_response=resp.auth_response, database=resp.database,
                                    auth_plugin=resp.auth_plugin,
                                    attrs=resp.attrs if resp.capabilities & Cap.CONNECT_ATTRS else None,
                                    charset=resp.charset, max_packet=resp.max_packet)


def test_front_capabilities():
    plain = front_capabilities(tls=False)
    assert not plain & Cap.COMPRESS and not plain & Cap.SSL and not plain & Cap.MULTI_STATEMENTS
    for flag in (Cap.PROTOCOL_41, Cap.SECURE_CONNECTION, Cap.PLUGIN_AUTH, Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA,
                 Cap.CONNECT_WITH_DB, Cap.DEPRECATE_EOF, Cap.TRANSACTIONS, Cap.MULTI_RESULTS, Cap.PS_MULTI_RESULTS,
                 Cap.CONNECT_ATTRS, Cap.LONG_PASSWORD, Cap.FOUND_ROWS):
        assert plain & flag, flag
    assert front_capabilities(tls=True) & Cap.SSL
    assert not front_capabilities(tls=True) & (Cap.SESSION_TRACK | Cap.QUERY_ATTRIBUTES | Cap.LOCAL_FILES)


def test_scramble():
    s = new_scramble()
    assert len(s) == 20 and b"\0" not in s and new_scramble() != s


def test_gateway_greeting_round_trip():
    scramble = new_scramble()
    caps = front_capabilities(tls=True)
    payload = build_handshake(connection_id=4242, scramble=scramble, capabilities=caps)
    hs = parse_handshake(payload)
    assert hs.server_version == "8.0.0-sdm-gateway" and hs.connection_id == 4242
    assert hs.scramble == scramble and hs.capabilities == caps and hs.auth_plugin == NATIVE_PASSWORD
    assert hs.status == Status.AUTOCOMMIT and not hs.is_mariadb and hs.mariadb_capabilities == 0
    with pytest.raises(ValueError):
        build_handshake(connection_id=1, scramble=b"short", capabilities=caps)


def test_parse_mariadb_style_greeting_with_extended_caps():
    caps = int(front_capabilities(tls=False) & ~Cap.LONG_PASSWORD)
    payload = bytearray(build_handshake(connection_id=7, scramble=b"A" * 20, capabilities=caps,
                                        server_version="5.5.5-10.11.19-MariaDB"))
    ext_at = 1 + len(b"5.5.5-10.11.19-MariaDB\0") + 4 + 9 + 2 + 1 + 2 + 2 + 1 + 6
    payload[ext_at:ext_at + 4] = (0x1D).to_bytes(4, "little")
    hs = parse_handshake(bytes(payload))
    assert hs.is_mariadb and hs.mariadb_capabilities == 0x1D and hs.scramble == b"A" * 20


def test_greeting_err_and_garbage():
    with pytest.raises(UpstreamLoginError) as info:
        parse_handshake(b"\xff\x10\x04Too many connections")
    assert info.value.code == 1040 and "Too many connections" in info.value.message
    with pytest.raises(ServerProtocolError, match="protocol version"):
        parse_handshake(b"\x09abc\0")
    with pytest.raises(ServerProtocolError):
        parse_handshake(b"\x0a8.0")


@pytest.mark.parametrize("caps", [
    int(front_capabilities(tls=False)),
    int(front_capabilities(tls=False) & ~Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA),
    int(Cap.PROTOCOL_41 | Cap.LONG_PASSWORD),  # NUL-terminated auth, no db/plugin/attrs
    int(front_capabilities(tls=False) & ~Cap.CONNECT_ATTRS),
])
def test_handshake_response_round_trip(caps):
    attrs = {"_client_name": "libmariadb", "_pid": "123", "ünïcode": "välue"}
    payload = build_handshake_response(capabilities=caps, username="read-only", auth_response=b"\x01" * 20,
                                       database="prod-db", auth_plugin=NATIVE_PASSWORD, attrs=attrs, charset=224)
    hello = parse_client_hello(payload)
    assert isinstance(hello, HandshakeResponse) and hello.username == "read-only" and hello.charset == 224
    assert hello.auth_response == b"\x01" * 20
    if caps & Cap.CONNECT_WITH_DB:
        assert hello.database == "prod-db"
    if caps & Cap.PLUGIN_AUTH:
        assert hello.auth_plugin == NATIVE_PASSWORD
    if caps & Cap.CONNECT_ATTRS:
        assert hello.attrs == attrs
    assert _reencode(hello) == payload


def test_long_auth_response_needs_lenenc():
    caps = int(front_capabilities(tls=False))
    hello = parse_client_hello(build_handshake_response(capabilities=caps, username="u", auth_response=b"t" * 600,
                                                        auth_plugin=CLEAR_PASSWORD))
    assert hello.auth_response == b"t" * 600 and hello.database is None
    with pytest.raises(ValueError):
        build_handshake_response(capabilities=int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION), username="u",
                                 auth_response=b"t" * 300)


def test_repr_hides_auth_response():
    hello = HandshakeResponse(0, 0, 0, "u", b"sdm_secret_token")
    assert "sdm_secret_token" not in repr(hello)
    assert "sdm_secret" not in repr(AuthMoreData(b"sdm_secret"))


def test_ssl_request():
    payload = build_ssl_request(capabilities=int(front_capabilities(tls=True)), charset=45)
    assert len(payload) == 32
    hello = parse_client_hello(payload)
    assert isinstance(hello, SSLRequest) and hello.charset == 45 and hello.capabilities & Cap.SSL
    # 32 bytes without the SSL flag is a truncated response, not an SSLRequest.
    with pytest.raises(ClientProtocolError):
        parse_client_hello(build_ssl_request(capabilities=0, charset=45)[:4].replace(b"\x08", b"\x00") + payload[4:])


def test_pre_41_client_refused():
    with pytest.raises(ClientProtocolError) as info:
        parse_client_hello(b"\x85\x44\x03\x00\x00\x00\x00\x01\x08" + b"\0" * 23 + b"u\0")
    assert info.value.code == ER_NOT_SUPPORTED_AUTH_MODE and info.value.sqlstate == "08004"


def test_truncated_and_lying_responses():
    good = build_handshake_response(capabilities=int(front_capabilities(tls=False)), username="u",
                                    auth_response=b"x" * 20, database="d", auth_plugin=NATIVE_PASSWORD,
                                    attrs={"a": "b"})
    for cut in range(len(good)):
        try:
            parse_client_hello(good[:cut])
        except ClientProtocolError as exc:
            assert exc.code in (1043, 1251)
    lying = bytearray(good)
    idx = good.index(b"u\0") + 2
    lying[idx] = 0xFC  # auth length now claims 0x?? bytes beyond the end
    with pytest.raises(ClientProtocolError):
        parse_client_hello(bytes(lying[:idx + 3]))
    with pytest.raises(ClientProtocolError, match="UTF-8"):
        parse_client_hello(good.replace(b"u\0", b"\xff\0", 1))


def test_attrs_block_bounds():
    caps = int(front_capabilities(tls=False))
    base = build_handshake_response(capabilities=caps & ~Cap.CONNECT_ATTRS, username="u", auth_response=b"",
                                    database="d", auth_plugin=NATIVE_PASSWORD)
    head = bytearray(base)
    head[:4] = caps.to_bytes(4, "little")
    inner = lenenc_bytes(b"k") + lenenc_bytes(b"vvvv")
    with pytest.raises(ClientProtocolError, match="attribute"):
        parse_client_hello(bytes(head) + lenenc_bytes(inner)[:1].replace(b"\x07", b"\x04") + inner)


def test_clear_password_switch_and_token():
    switch = build_clear_password_switch(b"S" * 20)
    assert switch == b"\xfemysql_clear_password\0" + b"S" * 20 + b"\0"
    assert parse_clear_password(b"tok_123\0") == "tok_123"
    assert parse_clear_password(b"tok_123") == "tok_123"
    assert parse_clear_password(b"\0") == ""
    for bad in (b"a\0b\0", b"\xff\xfe\0", b"t" * (MAX_TOKEN_LENGTH + 1)):
        with pytest.raises(ClientProtocolError) as info:
            parse_clear_password(bad)
        assert bad.decode("latin1")[:20] not in info.value.message or len(bad) < 4


def test_ok_err_eof_round_trips():
    ok = parse_ok(build_ok(affected_rows=300, last_insert_id=70000, status=0x4002, warnings=3, info=b"Rows matched"))
    assert ok == OkPacket(300, 70000, 0x4002, 3, b"Rows matched")
    eof = parse_eof(build_eof(warnings=2, status=0x22))
    assert (eof.warnings, eof.status) == (2, 0x22)
    err = parse_err(build_err(1142, "42000", "INSERT command denied"))
    assert err == ErrPacket(1142, "42000", "INSERT command denied")
    assert parse_err(build_err(1040, "08004", "Too many", protocol41=False)) == ErrPacket(1040, "HY000", "Too many")
    assert build_err(1, "HY", "x")[3:9] == b"#HY000"
    assert len(build_err(1, "HY000", "m" * 10000)) < 2100


def test_err_fields_mapping():
    assert err_fields(sdm_errors.AuthenticationFailed("bad token"))[:2] == (ER_ACCESS_DENIED_ERROR, "28000")
    assert err_fields(sdm_errors.AccessDenied("no lease"))[:2] == (1045, "28000")
    assert err_fields(sdm_errors.UpstreamError("down"))[:2] == (2003, "HY000")
    assert err_fields(sdm_errors.AuditUnavailable("audit"))[:2] == (1105, "HY000")
    assert err_fields(RuntimeError("secret detail")) == (1105, "HY000", "internal gateway error")
    assert b"#28000" in build_err_for(sdm_errors.AuthenticationFailed("bad token"))


def test_parse_auth_reply():
    assert isinstance(parse_auth_reply(build_ok()), OkPacket)
    assert parse_auth_reply(build_err(1045, "28000", "denied")).code == 1045
    assert parse_auth_reply(b"\xfecaching_sha2_password\0" + b"N" * 20 + b"\0") == AuthSwitch(
        "caching_sha2_password", b"N" * 20)
    assert parse_auth_reply(b"\x01\x03").data == b"\x03"
    with pytest.raises(ServerProtocolError, match="pre-4.1"):
        parse_auth_reply(b"\xfe")
    with pytest.raises(ServerProtocolError):
        parse_auth_reply(b"")
    with pytest.raises(ServerProtocolError):
        parse_auth_reply(b"\x07junk")


def test_change_user():
    caps = int(front_capabilities(tls=False))
    payload = (b"\x11" + b"superuser\0" + b"\x14" + b"a" * 20 + b"prod\0" + b"\x2d\x00"
               + b"mysql_native_password\0" + lenenc_bytes(lenenc_bytes(b"_os") + lenenc_bytes(b"Linux")))
    cu = parse_change_user(payload, caps)
    assert (cu.username, cu.database, cu.charset, cu.auth_plugin, cu.attrs) == (
        "superuser", "prod", 45, NATIVE_PASSWORD, {"_os": "Linux"})
    assert "aaaa" not in repr(cu)
    minimal = parse_change_user(b"\x11u\0\x00", caps)
    assert minimal.username == "u" and minimal.database is None and minimal.charset is None
    with pytest.raises(ClientProtocolError):
        parse_change_user(b"\x11u\0\x14abc", caps)
