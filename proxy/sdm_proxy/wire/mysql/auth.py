"""Upstream authentication: the plugins' math and a table-driven, sans-I/O login to the database.

Plugins: ``mysql_native_password``, ``caching_sha2_password`` (fast path; full auth with the
password in clear over TLS, or RSA-OAEP encrypted with the server's public key), ``sha256_password``
and ``mysql_clear_password`` (TLS only). A server AuthSwitchRequest is followed once.

The plain password never lives in this module's objects: every call that needs it takes a
``secret_fn`` and calls it at the moment the reply is computed, so the caller decides how long the
secret exists (DESIGN §2.1). It never appears in an exception message or a repr.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import (
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_REJECTED,
    ServerProtocolError,
    UpstreamLoginError,
)
from .messages import (
    CACHING_SHA2,
    CLEAR_PASSWORD,
    DEFAULT_CHARSET,
    DEFAULT_MAX_PACKET,
    NATIVE_PASSWORD,
    PASS_THROUGH_CAPABILITIES,
    SHA256_PASSWORD,
    AuthMoreData,
    AuthSwitch,
    Cap,
    ErrPacket,
    OkPacket,
    ServerHandshake,
    build_handshake_response,
    build_ssl_request,
    cap_names,
    parse_auth_reply,
    parse_handshake,
)
from .packets import MAX_SERVER_CONTROL_PACKET, PacketReader, frame_packets

SecretFn = Callable[[], bytes]

FAST_AUTH_SUCCESS = b"\x03"
PERFORM_FULL_AUTH = b"\x04"
SHA2_PUBLIC_KEY_REQUEST = b"\x02"  # caching_sha2_password asks with 0x02 ...
SHA256_PUBLIC_KEY_REQUEST = b"\x01"  # ... sha256_password with 0x01


# ---- the plugins' math -------------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_password_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty password -> empty response."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(nonce[:20] + stage2).digest())


def caching_sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce): the fast-auth reply."""
    if not password:
        return b""
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:20]).digest())


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """RSA-OAEP(SHA-1) of (password + NUL) XOR nonce (repeated), as both SHA-2 plugins expect."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError):
        raise ServerProtocolError("upstream sent an unreadable RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ServerProtocolError("upstream's public key is not an RSA key")
    if not nonce:
        raise ServerProtocolError("upstream sent an empty nonce")
    data = password + b"\0"
    masked = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))
    try:
        return key.encrypt(masked, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    except ValueError:  # message too long for the key: the password itself must not show up
        raise UpstreamLoginError("the credential's password is too long for the upstream's RSA key; "
                                 "use TLS to the datasource") from None


# ---- the auth exchange as a table --------------------------------------------------------------


class AuthState(str, Enum):
    SENT_SIMPLE = "sent_simple"  # native / clear / RSA / TLS-clear response sent: OK, ERR or a switch
    SENT_SHA2 = "sent_sha2"  # caching_sha2 scramble sent: OK, ERR, switch, fast-OK or full-auth
    SHA2_FAST_OK = "sha2_fast_ok"  # the server said 0x03: an OK follows
    AWAIT_PUBLIC_KEY = "await_public_key"  # asked for the RSA key
    SENT_FINAL = "sent_final"  # full-auth reply sent: only OK or ERR now
    DONE = "done"


class Reply(str, Enum):
    OK = "ok"
    ERR = "err"
    SWITCH = "switch"
    FAST_OK = "fast_ok"
    FULL_AUTH = "full_auth"
    MORE_DATA = "more_data"


S, R = AuthState, Reply

# (state, server reply) -> handler name. Anything else is the server breaking the protocol.
AUTH_TABLE: dict[tuple[AuthState, Reply], str] = {
    (S.SENT_SIMPLE, R.OK): "_ok", (S.SENT_SIMPLE, R.ERR): "_err", (S.SENT_SIMPLE, R.SWITCH): "_switch",
    (S.SENT_SHA2, R.OK): "_ok", (S.SENT_SHA2, R.ERR): "_err", (S.SENT_SHA2, R.SWITCH): "_switch",
    (S.SENT_SHA2, R.FAST_OK): "_fast_ok", (S.SENT_SHA2, R.FULL_AUTH): "_full_auth",
    (S.SHA2_FAST_OK, R.OK): "_ok", (S.SHA2_FAST_OK, R.ERR): "_err",
    (S.AWAIT_PUBLIC_KEY, R.MORE_DATA): "_public_key", (S.AWAIT_PUBLIC_KEY, R.ERR): "_err",
    (S.SENT_FINAL, R.OK): "_ok", (S.SENT_FINAL, R.ERR): "_err",
}


def _classify(reply: object) -> Reply:
    if isinstance(reply, OkPacket):
        return Reply.OK
    if isinstance(reply, ErrPacket):
        return Reply.ERR
    if isinstance(reply, AuthSwitch):
        return Reply.SWITCH
    assert isinstance(reply, AuthMoreData)
    if reply.data == FAST_AUTH_SUCCESS:
        return Reply.FAST_OK
    if reply.data == PERFORM_FULL_AUTH:
        return Reply.FULL_AUTH
    return Reply.MORE_DATA


class UpstreamAuth:
    """The auth part of an upstream login: ``start`` gives the first reply, ``step`` the next ones.

    ``secure``: the channel is TLS (or a local socket), so a full-auth password may travel in clear.
    ``server_public_key``: a PEM the datasource is configured with (pinned). Without it, and without
    ``allow_public_key_request``, full auth over plain TCP is refused, like libmysqlclient does
    without --get-server-public-key: a key fetched in clear can be a man in the middle's.
    """

    def __init__(self, *, secure: bool, server_public_key: bytes | None = None,
                 allow_public_key_request: bool = False):
        self.secure = secure
        self.server_public_key = server_public_key
        self.allow_public_key_request = allow_public_key_request
        self.state: AuthState | None = None
        self.plugin: str | None = None
        self.ok: OkPacket | None = None
        self._nonce = b""
        self._switched = False

    @property
    def done(self) -> bool:
        return self.state is AuthState.DONE

    def start(self, plugin: str, nonce: bytes, secret_fn: SecretFn) -> bytes:
        """The auth response for the greeting's plugin (goes into HandshakeResponse41)."""
        return self._respond(plugin, nonce, secret_fn)

    def step(self, payload: bytes, secret_fn: SecretFn) -> bytes | None:
        """Consume one server packet; returns the payload to send next (None: nothing to send)."""
        reply = parse_auth_reply(payload)
        kind = _classify(reply)
        handler = AUTH_TABLE.get((self.state, kind))
        if handler is None:
            raise ServerProtocolError(f"upstream sent an unexpected {kind.value.replace('_', ' ')} packet "
                                      f"during {self.plugin} authentication ({self.state.value if self.state else 'start'})")
        return getattr(self, handler)(reply, secret_fn)

    # -- handlers ----------------------------------------------------------------------------------

    def _ok(self, reply: OkPacket, secret_fn: SecretFn) -> None:
        self.ok = reply
        self.state = AuthState.DONE

    def _err(self, reply: ErrPacket, secret_fn: SecretFn) -> None:
        raise UpstreamLoginError(f"upstream refused the gateway's login: ({reply.code}) {reply.message}",
                                 code=reply.code, sqlstate=reply.sqlstate)

    def _switch(self, reply: AuthSwitch, secret_fn: SecretFn) -> bytes:
        if self._switched:
            raise ServerProtocolError("upstream switched authentication method twice")
        self._switched = True
        return self._respond(reply.plugin, reply.data, secret_fn)

    def _fast_ok(self, reply: AuthMoreData, secret_fn: SecretFn) -> None:
        self.state = AuthState.SHA2_FAST_OK

    def _full_auth(self, reply: AuthMoreData, secret_fn: SecretFn) -> bytes:
        return self._full_or_key_request(SHA2_PUBLIC_KEY_REQUEST, secret_fn)

    def _public_key(self, reply: AuthMoreData, secret_fn: SecretFn) -> bytes:
        self.state = AuthState.SENT_FINAL
        return rsa_encrypt_password(secret_fn(), self._nonce, reply.data)

    # -- replies -----------------------------------------------------------------------------------

    def _respond(self, plugin: str, nonce: bytes, secret_fn: SecretFn) -> bytes:
        self.plugin = plugin
        self._nonce = nonce
        if plugin == NATIVE_PASSWORD:
            if len(nonce) < 20:
                raise ServerProtocolError("upstream sent a short mysql_native_password nonce")
            self.state = AuthState.SENT_SIMPLE
            return native_password_scramble(secret_fn(), nonce)
        if plugin == CACHING_SHA2:
            if len(nonce) < 20:
                raise ServerProtocolError("upstream sent a short caching_sha2_password nonce")
            self.state = AuthState.SENT_SHA2
            return caching_sha2_scramble(secret_fn(), nonce)
        if plugin == SHA256_PASSWORD:
            reply = self._full_or_key_request(SHA256_PUBLIC_KEY_REQUEST, secret_fn)
            if self.state is AuthState.SENT_FINAL:
                self.state = AuthState.SENT_SIMPLE  # the first reply: a switch is still allowed
            return reply
        if plugin == CLEAR_PASSWORD:
            if not self.secure:
                raise UpstreamLoginError("upstream asks for the password in clear over an unencrypted "
                                         "connection; enable TLS for the datasource",
                                         code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
            self.state = AuthState.SENT_SIMPLE
            return secret_fn() + b"\0"
        raise UpstreamLoginError(f"upstream asks for authentication plugin {plugin!r}, which the gateway "
                                 "does not support", code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)

    def _full_or_key_request(self, key_request: bytes, secret_fn: SecretFn) -> bytes:
        if self.secure:
            self.state = AuthState.SENT_FINAL
            return secret_fn() + b"\0"
        if self.server_public_key is not None:
            self.state = AuthState.SENT_FINAL
            return rsa_encrypt_password(secret_fn(), self._nonce, self.server_public_key)
        if self.allow_public_key_request:
            self.state = AuthState.AWAIT_PUBLIC_KEY
            return key_request
        raise UpstreamLoginError(
            f"upstream needs full {self.plugin} authentication, which over plain TCP requires the server's "
            "RSA public key; enable TLS for the datasource or configure its public key",
            code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)

    def __repr__(self) -> str:
        return f"UpstreamAuth(plugin={self.plugin!r}, state={self.state.value if self.state else None})"


# ---- the whole upstream login ------------------------------------------------------------------

REQUIRED_SERVER_CAPABILITIES = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION


def upstream_capabilities(front_capabilities: int, server_capabilities: int, *, tls: bool) -> int:
    """The flags the gateway asks the upstream for.

    Flags that shape what the server sends (DEPRECATE_EOF, MULTI_RESULTS, FOUND_ROWS, ...) are the
    client's own choice, so relayed packets mean the same thing on both legs; a server lacking one
    of them cannot serve this client through a byte-for-byte relay, which is refused clearly.
    """
    missing = REQUIRED_SERVER_CAPABILITIES & ~server_capabilities
    if missing:
        raise UpstreamLoginError(f"upstream server lacks required capabilities: {cap_names(missing)}",
                                 code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
    wanted = front_capabilities & PASS_THROUGH_CAPABILITIES
    missing = wanted & ~server_capabilities & ~Cap.ODBC  # ODBC is a no-op flag nobody advertises reliably
    if missing:
        raise UpstreamLoginError(f"upstream server lacks capabilities this client uses: {cap_names(missing)}",
                                 code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
    caps = Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | (wanted & server_capabilities)
    caps |= server_capabilities & (Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.CONNECT_ATTRS
                                   | Cap.CONNECT_WITH_DB)
    if tls:
        caps |= Cap.SSL
    return int(caps)


class LoginPhase(str, Enum):
    AWAIT_GREETING = "await_greeting"
    TLS = "tls"  # SSLRequest sent; the glue is doing the TLS handshake
    AUTH = "auth"
    DONE = "done"


@dataclass(frozen=True)
class LoginStep:
    """What the glue does next: write ``send`` (framed), then start TLS if asked; ``done`` = logged in."""

    send: bytes = b""
    start_tls: bool = False
    done: bool = False

    def __repr__(self) -> str:  # ``send`` may hold a clear password (full auth over TLS)
        return f"LoginStep(send={len(self.send)} bytes, start_tls={self.start_tls}, done={self.done})"


class UpstreamLogin:
    """The gateway's login to the database, sans I/O: feed bytes in, get a ``LoginStep`` out.

    ``tls``: "disable", "prefer" (use it when offered) or "require" (refuse a server without it).
    The client's HandshakeResponse is never forwarded: the gateway writes its own, with the leased
    credential's user name, and only takes the client's charset and format-shaping flags from it.
    """

    def __init__(self, *, username: str, database: str | None, front_capabilities: int,
                 charset: int = DEFAULT_CHARSET, attrs: dict[str, str] | None = None, tls: str = "disable",
                 server_public_key: bytes | None = None, allow_public_key_request: bool = False,
                 max_packet: int = DEFAULT_MAX_PACKET):
        if tls not in ("disable", "prefer", "require"):
            raise ValueError(f"tls must be disable, prefer or require, not {tls!r}")
        self.username = username
        self.database = database
        self.front_capabilities = front_capabilities
        self.charset = charset
        self.attrs = attrs
        self.tls_mode = tls
        self.max_packet = max_packet
        self.phase = LoginPhase.AWAIT_GREETING
        self.handshake: ServerHandshake | None = None
        self.capabilities = 0
        self.tls_active = False
        self._reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=0)
        self._seq = 0
        self._auth_options = (server_public_key, allow_public_key_request)
        self.auth: UpstreamAuth | None = None

    @property
    def thread_id(self) -> int | None:
        """The upstream connection id (what KILL on the upstream needs)."""
        return self.handshake.connection_id if self.handshake else None

    @property
    def ok(self) -> OkPacket | None:
        return self.auth.ok if self.auth else None

    def receive_data(self, data: bytes, secret_fn: SecretFn) -> LoginStep:
        if self.phase in (LoginPhase.TLS, LoginPhase.DONE):
            raise ServerProtocolError(f"upstream sent unexpected data ({self.phase.value})")
        self._reader.feed(data)
        # Usually one packet per call, but fast-auth-success and the OK after it may arrive together.
        sends: list[bytes] = []
        while (packet := self._reader.next_packet()) is not None:
            if self.phase in (LoginPhase.TLS, LoginPhase.DONE):
                raise ServerProtocolError(f"upstream sent unexpected data ({self.phase.value})")
            self._seq = packet.next_seq
            if self.phase is LoginPhase.AWAIT_GREETING:
                step = self._on_greeting(packet.payload, secret_fn)
            else:
                step = self._on_auth(packet.payload, secret_fn)
            if step.send:
                sends.append(step.send)
            if step.start_tls or step.done:
                if self._reader.in_packet:
                    raise ServerProtocolError(f"upstream sent unexpected data ({self.phase.value})")
                return LoginStep(send=b"".join(sends), start_tls=step.start_tls, done=step.done)
        return LoginStep(send=b"".join(sends))

    def tls_started(self, secret_fn: SecretFn) -> LoginStep:
        if self.phase is not LoginPhase.TLS:
            raise RuntimeError("tls_started() without a pending TLS upgrade")
        self.tls_active = True
        self.phase = LoginPhase.AUTH
        return self._send(self._response(secret_fn))

    def _on_greeting(self, payload: bytes, secret_fn: SecretFn) -> LoginStep:
        hs = self.handshake = parse_handshake(payload)
        server_tls = bool(hs.capabilities & Cap.SSL)
        if self.tls_mode == "require" and not server_tls:
            raise UpstreamLoginError("the datasource requires TLS but the upstream server does not offer it")
        use_tls = server_tls and self.tls_mode != "disable"
        self.capabilities = upstream_capabilities(self.front_capabilities, hs.capabilities, tls=use_tls)
        if use_tls:
            self.phase = LoginPhase.TLS
            step = self._send(build_ssl_request(capabilities=self.capabilities, charset=self.charset,
                                                max_packet=self.max_packet))
            return LoginStep(send=step.send, start_tls=True)
        self.phase = LoginPhase.AUTH
        return self._send(self._response(secret_fn))

    def _response(self, secret_fn: SecretFn) -> bytes:
        hs = self.handshake
        key, allow = self._auth_options
        self.auth = UpstreamAuth(secure=self.tls_active, server_public_key=key, allow_public_key_request=allow)
        plugin = hs.auth_plugin if self.capabilities & Cap.PLUGIN_AUTH else NATIVE_PASSWORD
        auth_response = self.auth.start(plugin, hs.scramble, secret_fn)
        return build_handshake_response(
            capabilities=self.capabilities, username=self.username, auth_response=auth_response,
            database=self.database if self.capabilities & Cap.CONNECT_WITH_DB else None,
            auth_plugin=plugin, attrs=self.attrs if self.capabilities & Cap.CONNECT_ATTRS else None,
            charset=self.charset, max_packet=self.max_packet)

    def _on_auth(self, payload: bytes, secret_fn: SecretFn) -> LoginStep:
        reply = self.auth.step(payload, secret_fn)
        if self.auth.done:
            self.phase = LoginPhase.DONE
            return LoginStep(done=True)
        if reply is None:
            return LoginStep()
        return self._send(reply)

    def _send(self, payload: bytes) -> LoginStep:
        data, self._seq = frame_packets(payload, self._seq)
        self._reader.expect_seq = self._seq
        return LoginStep(send=data)

    def __repr__(self) -> str:
        return f"UpstreamLogin(user={self.username!r}, phase={self.phase.value})"
