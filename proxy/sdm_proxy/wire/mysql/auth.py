"""Upstream login: the gateway's table-driven, sans-I/O login to the database.

``UpstreamLogin`` takes the server's bytes and says what to send next (``LoginStep``): the greeting,
an SSLRequest and TLS when the datasource wants it, the gateway's own HandshakeResponse41 (with the
leased credential's user name and the capabilities from ``upstream_capabilities``), then the auth
plugin exchange, which ``auth_exchange.UpstreamAuth`` runs (the plugins' math is in
``auth_plugins``). The asyncio glue that drives it is ``upstream``.

The plain password never lives in this module's objects: every call that needs it takes a
``secret_fn`` and calls it at the moment the reply is computed, so the caller decides how long the
secret exists (DESIGN §2.1). It never appears in an exception message or a repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# AUTH_TABLE, AuthState and the three auth_plugins functions are re-exported: used by
# tests/wire/mysql/test_mysql_auth.py (native_password_scramble also by test_mysql_real_server.py).
from .auth_exchange import AUTH_TABLE, AuthState, SecretFn, UpstreamAuth
from .auth_packets import NATIVE_PASSWORD
from .auth_plugins import (
    caching_sha2_scramble,
    native_password_scramble,
    rsa_encrypt_password,
)
from .errors import (
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_REJECTED,
    ServerProtocolError,
    UpstreamLoginError,
)
from .flags import PASS_THROUGH_CAPABILITIES, Cap, cap_names
from .handshake import (
    DEFAULT_CHARSET,
    DEFAULT_MAX_PACKET,
    ServerHandshake,
    build_handshake_response,
    build_ssl_request,
    parse_handshake,
)
from .ok_err_eof import OkPacket
from .packets import MAX_SERVER_CONTROL_PACKET, PacketReader, frame_packets

__all__ = [
    "AUTH_TABLE", "REQUIRED_SERVER_CAPABILITIES", "AuthState", "LoginPhase", "LoginStep", "UpstreamAuth",
    "UpstreamLogin", "caching_sha2_scramble", "native_password_scramble", "rsa_encrypt_password",
    "upstream_capabilities",
]


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
    ``local_socket``: the connection is a Unix socket, which MySQL's clients count as secure as TLS
    (a full-auth or ``mysql_clear_password`` password may go over it; nothing else can listen in).
    The client's HandshakeResponse is never forwarded: the gateway writes its own, with the leased
    credential's user name, and only takes the client's charset and format-shaping flags from it.
    """

    def __init__(self, *, username: str, database: str | None, front_capabilities: int,
                 charset: int = DEFAULT_CHARSET, attrs: dict[str, str] | None = None, tls: str = "disable",
                 server_public_key: bytes | None = None, allow_public_key_request: bool = False,
                 max_packet: int = DEFAULT_MAX_PACKET, local_socket: bool = False,
                 server_verified: bool = False):
        if tls not in ("disable", "prefer", "require"):
            raise ValueError(f"tls must be disable, prefer or require, not {tls!r}")
        self.username = username
        self.database = database
        self.front_capabilities = front_capabilities
        self.charset = charset
        self.attrs = attrs
        self.tls_mode = tls
        self.local_socket = local_socket
        self.server_verified = server_verified  # TLS, if it starts, checks the server (verify-full)
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
        self.auth = UpstreamAuth(secure=self.tls_active or self.local_socket, server_public_key=key,
                                 allow_public_key_request=allow,
                                 verified=(self.tls_active and self.server_verified) or self.local_socket)
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
