"""Upstream auth: plugin math against an independent implementation, and the table-driven exchange
against a simulated MySQL 8 server that really verifies what the gateway sends.

No MySQL 8 server is available here (MariaDB has no caching_sha2_password), so the simulated server
below checks the caching_sha2 scramble from its stored SHA256(SHA256(password)) and decrypts the
RSA-OAEP reply with its private key, exactly as mysqld does. mysql_native_password is checked
against the real MariaDB in test_mysql_real_server_login.py.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pymysql import (
    _auth as pymysql_auth,  # an independent implementation to compare with
)
from sdm_proxy.wire.mysql.auth import (
    AUTH_TABLE,
    AuthState,
    UpstreamAuth,
    UpstreamLogin,
    caching_sha2_scramble,
    native_password_scramble,
    rsa_encrypt_password,
    upstream_capabilities,
)
from sdm_proxy.wire.mysql.errors import ServerProtocolError, UpstreamLoginError
from sdm_proxy.wire.mysql.messages import (
    CACHING_SHA2,
    CLEAR_PASSWORD,
    NATIVE_PASSWORD,
    SHA256_PASSWORD,
    Cap,
    build_auth_switch,
    build_err,
    build_handshake,
    build_ok,
    front_capabilities,
    parse_client_hello,
)
from sdm_proxy.wire.mysql.packets import PacketReader, frame, frame_packets

PASSWORD = b"pw_Sup3r-secret/\xc3\xa9"
NONCE = b"0123456789abcdefghij"
_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = _PRIVATE.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("password", [b"x", b"secret", PASSWORD, b"a" * 200])
@pytest.mark.parametrize("nonce", [NONCE, bytes(range(1, 21)), b"\x7f" * 20])
def test_scrambles_match_independent_implementation(password, nonce):
    assert native_password_scramble(password, nonce) == pymysql_auth.scramble_native_password(password, nonce)
    assert caching_sha2_scramble(password, nonce) == pymysql_auth.scramble_caching_sha2(password, nonce)


def test_empty_password_sends_empty_response():
    assert native_password_scramble(b"", NONCE) == b"" and caching_sha2_scramble(b"", NONCE) == b""


def _server_check_native(reply: bytes, nonce: bytes, password: bytes) -> bool:
    """What mysqld does with mysql.user's stored SHA1(SHA1(password))."""
    stored = hashlib.sha1(hashlib.sha1(password).digest()).digest()
    candidate = bytes(a ^ b for a, b in zip(reply, hashlib.sha1(nonce + stored).digest()))
    return hashlib.sha1(candidate).digest() == stored


def _server_check_sha2_fast(reply: bytes, nonce: bytes, password: bytes) -> bool:
    """What mysqld's caching_sha2 cache holds: SHA256(SHA256(password))."""
    cached = hashlib.sha256(hashlib.sha256(password).digest()).digest()
    candidate = bytes(a ^ b for a, b in zip(reply, hashlib.sha256(cached + nonce).digest()))
    return hashlib.sha256(candidate).digest() == cached


def _server_decrypt(reply: bytes, nonce: bytes) -> bytes:
    plain = _PRIVATE.decrypt(reply, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                 label=None))
    return bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(plain))


def test_server_side_verification_of_our_scrambles():
    assert _server_check_native(native_password_scramble(PASSWORD, NONCE), NONCE, PASSWORD)
    assert not _server_check_native(native_password_scramble(b"other", NONCE), NONCE, PASSWORD)
    assert _server_check_sha2_fast(caching_sha2_scramble(PASSWORD, NONCE), NONCE, PASSWORD)
    assert not _server_check_sha2_fast(caching_sha2_scramble(PASSWORD, NONCE[::-1]), NONCE, PASSWORD)
    assert _server_decrypt(rsa_encrypt_password(PASSWORD, NONCE, PUBLIC_PEM), NONCE) == PASSWORD + b"\0"


def test_rsa_errors_never_show_the_password():
    with pytest.raises(ServerProtocolError):
        rsa_encrypt_password(PASSWORD, NONCE, b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UpstreamLoginError) as info:
        rsa_encrypt_password(b"p" * 400, NONCE, PUBLIC_PEM)
    assert "ppp" not in str(info.value)


class SecretCounter:
    def __init__(self, secret: bytes = PASSWORD):
        self.secret, self.calls = secret, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.secret


# ---- the exchange, one plugin at a time ---------------------------------------------------------


def test_native_ok():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    first = auth.start(NATIVE_PASSWORD, NONCE, fn)
    assert _server_check_native(first, NONCE, PASSWORD) and fn.calls == 1
    assert auth.step(build_ok(status=2), fn) is None and auth.done and auth.ok.status == 2


def test_caching_sha2_fast_path():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    assert _server_check_sha2_fast(auth.start(CACHING_SHA2, NONCE, fn), NONCE, PASSWORD)
    assert auth.step(b"\x01\x03", fn) is None and auth.state is AuthState.SHA2_FAST_OK
    assert auth.step(build_ok(), fn) is None and auth.done
    assert fn.calls == 1  # the fast path needs the secret once


def test_caching_sha2_full_auth_over_verified_tls_sends_clear_password():
    auth, fn = UpstreamAuth(secure=True, verified=True), SecretCounter()
    auth.start(CACHING_SHA2, NONCE, fn)
    assert auth.step(b"\x01\x04", fn) == PASSWORD + b"\0"
    auth.step(build_ok(), fn)
    assert auth.done


@pytest.mark.parametrize("plugin", [CACHING_SHA2, SHA256_PASSWORD])
def test_full_auth_over_unverified_tls_never_sends_the_password(plugin):
    # Review: under ``require`` anyone in the middle finishes TLS with a certificate of their own,
    # answers "perform full authentication" and mysqld's rule (clear over TLS) handed them the password.
    auth, fn = UpstreamAuth(secure=True, verified=False), SecretCounter()
    with pytest.raises(UpstreamLoginError, match="verify-full") as info:
        first = auth.start(plugin, NONCE, fn)
        auth.step(b"\x01\x04", fn)
    if plugin == CACHING_SHA2:
        assert _server_check_sha2_fast(first, NONCE, PASSWORD)  # the scramble went; the password did not
    assert PASSWORD.decode() not in str(info.value)
    assert info.value.code == 1251


def test_caching_sha2_full_auth_with_pinned_key():
    auth, fn = UpstreamAuth(secure=False, server_public_key=PUBLIC_PEM), SecretCounter()
    auth.start(CACHING_SHA2, NONCE, fn)
    reply = auth.step(b"\x01\x04", fn)
    assert _server_decrypt(reply, NONCE) == PASSWORD + b"\0"
    auth.step(build_ok(), fn)
    assert auth.done


def test_caching_sha2_full_auth_requests_key_when_allowed():
    auth, fn = UpstreamAuth(secure=False, allow_public_key_request=True), SecretCounter()
    auth.start(CACHING_SHA2, NONCE, fn)
    assert auth.step(b"\x01\x04", fn) == b"\x02"
    reply = auth.step(b"\x01" + PUBLIC_PEM, fn)
    assert _server_decrypt(reply, NONCE) == PASSWORD + b"\0"
    auth.step(build_ok(), fn)
    assert auth.done


def test_caching_sha2_full_auth_refused_without_tls_or_key():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    auth.start(CACHING_SHA2, NONCE, fn)
    with pytest.raises(UpstreamLoginError, match="enable TLS") as info:
        auth.step(b"\x01\x04", fn)
    assert info.value.code == 1251 and PASSWORD.decode() not in str(info.value)


def test_auth_switch_from_native_to_sha2_and_only_once():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    auth.start(NATIVE_PASSWORD, NONCE, fn)
    new_nonce = b"N" * 20
    reply = auth.step(build_auth_switch(CACHING_SHA2, new_nonce + b"\0"), fn)
    assert _server_check_sha2_fast(reply, new_nonce, PASSWORD) and auth.plugin == CACHING_SHA2
    with pytest.raises(ServerProtocolError, match="twice"):
        auth.step(build_auth_switch(NATIVE_PASSWORD, NONCE + b"\0"), fn)


def test_sha256_password_plugin():
    auth, fn = UpstreamAuth(secure=True, verified=True), SecretCounter()
    assert auth.start(SHA256_PASSWORD, NONCE, fn) == PASSWORD + b"\0"
    auth.step(build_ok(), fn)
    assert auth.done
    auth = UpstreamAuth(secure=False, allow_public_key_request=True)
    assert auth.start(SHA256_PASSWORD, NONCE, fn) == b"\x01"
    assert _server_decrypt(auth.step(b"\x01" + PUBLIC_PEM, fn), NONCE) == PASSWORD + b"\0"


def test_clear_password_plugin_only_to_a_verified_server():
    """Review: under `require` a man in the middle finishes TLS with any certificate and asks for
    mysql_clear_password; only verify-full (or a Unix socket) is a server known to be the one."""
    for secure in (False, True):
        with pytest.raises(UpstreamLoginError, match="not verified"):
            UpstreamAuth(secure=secure).start(CLEAR_PASSWORD, b"", SecretCounter())
    verified = UpstreamAuth(secure=True, verified=True)
    assert verified.start(CLEAR_PASSWORD, b"", SecretCounter()) == PASSWORD + b"\0"


def test_a_login_under_require_does_not_count_as_verified():
    assert not _verified_after_tls(server_verified=False)
    assert _verified_after_tls(server_verified=True)


def _verified_after_tls(*, server_verified: bool) -> bool:
    server = FakeMySQL8()
    login = UpstreamLogin(username="u", database=None, front_capabilities=0, tls="require",
                          server_verified=server_verified)
    server.receive(login.receive_data(server.greeting(), SecretCounter()).send)
    login.tls_started(SecretCounter())
    return login.auth.verified


def test_unknown_plugin_refused():
    with pytest.raises(UpstreamLoginError, match="client_ed25519") as info:
        UpstreamAuth(secure=True).start("client_ed25519", NONCE, SecretCounter())
    assert info.value.code == 1251


def test_err_carries_server_code():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    auth.start(NATIVE_PASSWORD, NONCE, fn)
    with pytest.raises(UpstreamLoginError) as info:
        auth.step(build_err(1045, "28000", "Access denied for user 'ro'@'10.0.0.1' (using password: YES)"), fn)
    assert (info.value.code, info.value.sqlstate) == (1045, "28000") and "Access denied" in info.value.message


def test_out_of_table_packets_are_server_errors():
    auth, fn = UpstreamAuth(secure=False), SecretCounter()
    auth.start(NATIVE_PASSWORD, NONCE, fn)
    with pytest.raises(ServerProtocolError, match="fast ok"):
        auth.step(b"\x01\x03", fn)
    auth = UpstreamAuth(secure=False)
    auth.start(CACHING_SHA2, NONCE, fn)
    auth.step(b"\x01\x03", fn)
    with pytest.raises(ServerProtocolError):
        auth.step(b"\x01\x04", fn)
    assert (AuthState.SENT_FINAL, "switch") not in AUTH_TABLE


def test_short_nonce_is_server_error():
    with pytest.raises(ServerProtocolError):
        UpstreamAuth(secure=False).start(NATIVE_PASSWORD, b"short", SecretCounter())


def test_secret_is_never_kept():
    auth, fn = UpstreamAuth(secure=False, allow_public_key_request=True), SecretCounter()
    auth.start(CACHING_SHA2, NONCE, fn)
    auth.step(b"\x01\x04", fn)
    auth.step(b"\x01" + PUBLIC_PEM, fn)
    held = repr(vars(auth)) + repr(auth)
    assert PASSWORD.decode("utf-8") not in held and repr(PASSWORD) not in held


# ---- capability negotiation -----------------------------------------------------------------------

SERVER_CAPS = int(front_capabilities(tls=True) | Cap.LOCAL_FILES | Cap.MULTI_STATEMENTS | Cap.SESSION_TRACK)


def test_upstream_capabilities_follow_the_client():
    client = int(Cap.PROTOCOL_41 | Cap.FOUND_ROWS | Cap.DEPRECATE_EOF | Cap.SESSION_TRACK | Cap.COMPRESS)
    caps = upstream_capabilities(client, SERVER_CAPS, tls=False)
    assert caps & Cap.FOUND_ROWS and caps & Cap.DEPRECATE_EOF and caps & Cap.PLUGIN_AUTH
    assert not caps & (Cap.SESSION_TRACK | Cap.COMPRESS | Cap.SSL | Cap.MULTI_RESULTS | Cap.LOCAL_FILES)
    assert upstream_capabilities(client, SERVER_CAPS, tls=True) & Cap.SSL


def test_upstream_lacking_a_format_flag_is_refused():
    with pytest.raises(UpstreamLoginError, match="DEPRECATE_EOF"):
        upstream_capabilities(int(Cap.DEPRECATE_EOF), SERVER_CAPS & ~Cap.DEPRECATE_EOF, tls=False)
    with pytest.raises(UpstreamLoginError, match="PROTOCOL_41"):
        upstream_capabilities(0, SERVER_CAPS & ~Cap.PROTOCOL_41, tls=False)


# ---- the whole login against a simulated MySQL 8 ---------------------------------------------------


class FakeMySQL8:
    """Enough of mysqld's login to check UpstreamLogin end to end (packets, sequence ids, TLS step)."""

    def __init__(self, *, plugin=CACHING_SHA2, cached=True, tls=True, password=PASSWORD, local=False):
        self.plugin, self.cached, self.password, self.local = plugin, cached, password, local
        self.caps = SERVER_CAPS if tls else SERVER_CAPS & ~Cap.SSL
        self.reader = PacketReader(limit=1 << 16, expect_seq=1)
        self.seq = 1
        self.response = None
        self.tls_seen = False

    def greeting(self) -> bytes:
        return frame(build_handshake(connection_id=99, scramble=NONCE, capabilities=self.caps,
                                     server_version="8.0.36", auth_plugin=self.plugin), 0)

    def _send(self, *payloads: bytes) -> bytes:
        out = []
        for p in payloads:
            data, self.seq = frame_packets(p, self.seq)
            out.append(data)
        self.reader.expect_seq = self.seq
        return b"".join(out)

    def receive(self, data: bytes) -> bytes:
        self.reader.feed(data)
        packet = self.reader.next_packet()
        self.seq = packet.next_seq
        if self.response is None:
            hello = parse_client_hello(packet.payload)
            if not hasattr(hello, "username"):
                self.tls_seen = True
                return b""
            self.response = hello
            reply = hello.auth_response
            if self.plugin == NATIVE_PASSWORD:
                return self._send(build_ok() if _server_check_native(reply, NONCE, self.password)
                                  else build_err(1045, "28000", "Access denied"))
            if not _server_check_sha2_fast(reply, NONCE, self.password):
                return self._send(build_err(1045, "28000", "Access denied"))
            if self.cached:
                return self._send(b"\x01\x03", build_ok())
            return self._send(b"\x01\x04")
        payload = packet.payload
        if payload == b"\x02":
            return self._send(b"\x01" + PUBLIC_PEM)
        if self.tls_seen or self.local:  # mysqld takes a password in clear over TLS or a Unix socket
            ok = payload == self.password + b"\0"
        else:
            ok = _server_decrypt(payload, NONCE) == self.password + b"\0"
        return self._send(build_ok() if ok else build_err(1045, "28000", "Access denied"))


def _run_login(server: FakeMySQL8, **kw) -> UpstreamLogin:
    login = UpstreamLogin(username="sdm_ro", database="shop", front_capabilities=int(Cap.DEPRECATE_EOF),
                          attrs={"_client_name": "sdm-gateway"}, **kw)
    fn = SecretCounter()
    step = login.receive_data(server.greeting(), fn)
    for _ in range(10):
        if step.done:
            return login
        incoming = server.receive(step.send) if step.send else b""
        if step.start_tls:
            step = login.tls_started(fn)
            continue
        step = login.receive_data(incoming, fn)
    raise AssertionError("login did not finish")


def test_login_fast_path_with_tls_and_coalesced_ok():
    server = FakeMySQL8()
    login = _run_login(server, tls="require")
    assert login.tls_active and server.tls_seen and login.ok is not None and login.thread_id == 99
    assert server.response.username == "sdm_ro" and server.response.database == "shop"
    assert server.response.auth_plugin == CACHING_SHA2 and server.response.attrs == {"_client_name": "sdm-gateway"}
    assert server.response.capabilities & Cap.DEPRECATE_EOF and server.response.capabilities & Cap.SSL


def test_login_full_auth_over_tls_only_to_a_verified_server():
    assert _run_login(FakeMySQL8(cached=False), tls="require", server_verified=True).ok is not None
    server = FakeMySQL8(cached=False)
    with pytest.raises(UpstreamLoginError, match="verify-full"):
        _run_login(server, tls="require")
    assert server.tls_seen and server.response is not None  # it got the scramble, nothing more


def test_login_full_auth_rsa_key_request():
    login = _run_login(FakeMySQL8(cached=False, tls=False), tls="prefer", allow_public_key_request=True)
    assert not login.tls_active and login.ok is not None


def test_login_full_auth_over_a_unix_socket_sends_the_password_as_mysql_clients_do():
    login = _run_login(FakeMySQL8(cached=False, tls=False, local=True), tls="disable", local_socket=True)
    assert not login.tls_active and login.ok is not None
    # The same server over TCP without TLS, a key or leave to ask for one: never in clear.
    with pytest.raises(UpstreamLoginError, match="requires the server's RSA public key"):
        _run_login(FakeMySQL8(cached=False, tls=False, local=True), tls="disable")


def test_login_wrong_password_and_tls_required():
    with pytest.raises(UpstreamLoginError) as info:
        _run_login(FakeMySQL8(password=b"other"), tls="require")
    assert info.value.code == 1045
    with pytest.raises(UpstreamLoginError, match="requires TLS"):
        _run_login(FakeMySQL8(tls=False), tls="require")


def test_login_repr_and_steps_hide_secrets():
    server = FakeMySQL8(cached=False)
    login = UpstreamLogin(username="u", database=None, front_capabilities=0, tls="require",
                          server_verified=True)
    fn = SecretCounter()
    step = login.receive_data(server.greeting(), fn)
    server.receive(step.send)
    step = login.tls_started(fn)
    step = login.receive_data(server.receive(step.send), fn)
    assert step.send.endswith(PASSWORD + b"\0")  # full auth over TLS: the password itself, framed
    assert PASSWORD.decode() not in repr(step) and PASSWORD.decode() not in repr(login)


def test_login_rejects_unsolicited_data():
    server = FakeMySQL8()
    login = UpstreamLogin(username="u", database=None, front_capabilities=0, tls="require")
    step = login.receive_data(server.greeting(), SecretCounter())
    assert step.start_tls
    with pytest.raises(ServerProtocolError):
        login.receive_data(frame(b"\x00", 1), SecretCounter())
