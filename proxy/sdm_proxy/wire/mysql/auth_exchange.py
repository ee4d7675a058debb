"""The upstream auth plugin exchange as a table: ``UpstreamAuth``. Sans I/O.

``UpstreamAuth`` gives the first auth reply for the greeting's plugin, then one per server packet,
following ``AUTH_TABLE`` ((state, server reply) -> handler): a packet the table does not expect is a
protocol error. Plugins: ``mysql_native_password``, ``caching_sha2_password`` (fast path; full auth
with the password in clear over TLS, or RSA-OAEP encrypted with the server's public key),
``sha256_password`` and ``mysql_clear_password`` (TLS only). A server AuthSwitchRequest is followed
once. The math is in ``auth_plugins``; the login around the exchange (greeting, TLS,
HandshakeResponse41) is ``auth.UpstreamLogin``.

The plain password never lives in this module's objects: every call that needs it takes a
``secret_fn`` and calls it at the moment the reply is computed, so the caller decides how long the
secret exists (DESIGN §2.1). It never appears in an exception message or a repr.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from .auth_packets import (
    CACHING_SHA2,
    CLEAR_PASSWORD,
    NATIVE_PASSWORD,
    SHA256_PASSWORD,
    AuthMoreData,
    AuthSwitch,
    parse_auth_reply,
)
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
from .ok_err_eof import ErrPacket, OkPacket

SecretFn = Callable[[], bytes]

FAST_AUTH_SUCCESS = b"\x03"
PERFORM_FULL_AUTH = b"\x04"
SHA2_PUBLIC_KEY_REQUEST = b"\x02"  # caching_sha2_password asks with 0x02 ...
SHA256_PUBLIC_KEY_REQUEST = b"\x01"  # ... sha256_password with 0x01


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

    ``secure``: the channel is TLS (or a local socket): mysqld then wants a full-auth password in clear.
    ``verified``: the server at the other end is authenticated (TLS verify-full, or a local socket):
    only then does a password go in clear, for ``mysql_clear_password`` or a SHA-2 full auth
    (review: under ``require`` a man in the middle with any certificate asked for it and got it).
    ``server_public_key``: a PEM the datasource is configured with (pinned). Without it, and without
    ``allow_public_key_request``, full auth over plain TCP is refused, like libmysqlclient does
    without --get-server-public-key: a key fetched in clear can be a man in the middle's.
    """

    def __init__(self, *, secure: bool, server_public_key: bytes | None = None,
                 allow_public_key_request: bool = False, verified: bool = False):
        self.secure = secure
        self.verified = verified
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
            if not self.verified:
                raise UpstreamLoginError("upstream asks for the password in clear over a connection whose "
                                         "server is not verified; use verified TLS for the datasource "
                                         "(--tls verify-full)",
                                         code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
            self.state = AuthState.SENT_SIMPLE
            return secret_fn() + b"\0"
        raise UpstreamLoginError(f"upstream asks for authentication plugin {plugin!r}, which the gateway "
                                 "does not support", code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)

    def _full_or_key_request(self, key_request: bytes, secret_fn: SecretFn) -> bytes:
        if self.secure:
            # Over TLS mysqld takes only the password in clear here, so under ``require`` a man in
            # the middle could ask for it with any certificate (review): a verified server only.
            if not self.verified:
                raise UpstreamLoginError(
                    f"upstream needs full {self.plugin} authentication, which sends the password in "
                    "clear; the gateway sends it only to a verified server: use --tls verify-full for "
                    "the datasource (or a Unix socket)",
                    code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
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
