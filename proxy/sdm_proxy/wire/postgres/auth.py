"""The gateway's upstream authentication, as a pure exchange: server 'R' payloads in, replies out.

Supported: SCRAM-SHA-256 (server signature verified, derived keys cached), md5 and cleartext. A
server that asks for anything else (GSS, SSPI, Kerberos, SCRAM-PLUS only) is refused with a clear
reason. The secret is fetched through ``secret_fn`` only when a reply needs it and never stored.

Cleartext only over TLS or a Unix socket (the MySQL side refuses ``mysql_clear_password`` without
TLS too): over plain TCP, anyone on the path, or a man in the middle posing as the server, would
read the plain secret, so the login is refused before the password is used or sent. TLS
``require`` does not verify the server; ``verify-full`` also keeps a man in the middle out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import framing
from .errors import ServerProtocolError, UpstreamLoginError
from .scram import MECHANISM, ScramClient, ScramKeyCache, md5_password

AUTH_OK, AUTH_KERBEROS, AUTH_CLEARTEXT, AUTH_MD5 = 0, 2, 3, 5
AUTH_GSS, AUTH_GSS_CONTINUE, AUTH_SSPI = 7, 8, 9
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12

_UNSUPPORTED = {AUTH_KERBEROS: "Kerberos V5", AUTH_GSS: "GSSAPI", AUTH_GSS_CONTINUE: "GSSAPI",
                AUTH_SSPI: "SSPI"}


class UpstreamAuthenticator:
    """Feed each AuthenticationXXX payload to ``step``; it returns the bytes to send (or b"")."""

    def __init__(self, *, user: str, secret_fn: Callable[[], bytes], cache: ScramKeyCache | None,
                 cache_scope: tuple, cleartext_ok: bool = False):
        self._user = user
        self._cleartext_ok = cleartext_ok  # a Unix socket, or TLS
        self._secret_fn = secret_fn
        self._cache = cache
        self._scope = cache_scope
        self._scram: ScramClient | None = None
        self.method: str | None = None
        self.ok = False

    async def step_async(self, payload: bytes) -> bytes:
        """``step``, with the SCRAM key derivation run in a worker thread (off the event loop)."""
        if len(payload) >= 4 and struct.unpack_from("!i", payload)[0] == AUTH_SASL_CONTINUE \
                and self._scram is not None:
            return framing.password_message(await self._scram.final_async(payload[4:], self._secret_fn))
        return self.step(payload)

    def step(self, payload: bytes) -> bytes:
        if len(payload) < 4:
            raise ServerProtocolError("upstream sent a malformed authentication request")
        (code,) = struct.unpack_from("!i", payload)
        body = payload[4:]
        if self.ok:
            raise ServerProtocolError("upstream sent an authentication request after AuthenticationOk")
        if self.method is not None and code not in (AUTH_OK, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL):
            # One method per login: a server (or someone in the middle) that starts SCRAM and then asks
            # for md5 or the password in clear would get a crackable hash or the password itself.
            raise ServerProtocolError(f"upstream switched authentication method during the login (after {self.method})")
        if code == AUTH_OK:
            if self._scram is not None and not self._scram.done:
                # A server that skips SASLFinal never proved it knows the verifier.
                raise UpstreamLoginError("upstream ended SCRAM without proving its identity")
            self.ok = True
            return b""
        if code == AUTH_CLEARTEXT:
            if not self._cleartext_ok:
                raise UpstreamLoginError(
                    "upstream asks for the password in clear text over a connection whose server is not "
                    "verified: refused, so the password never goes to whoever sits in between (use "
                    "scram-sha-256 on the server, or verified TLS for the datasource: --tls verify-full)")
            self.method = "password"
            return framing.password_message(self._secret_fn() + b"\0")
        if code == AUTH_MD5:
            if len(body) != 4:
                raise ServerProtocolError("upstream sent a malformed md5 salt")
            self.method = "md5"
            return framing.password_message(md5_password(self._secret_fn(), self._user, body) + b"\0")
        if code == AUTH_SASL:
            mechanisms = [m.decode("ascii", "replace") for m in body.split(b"\0") if m]
            if MECHANISM not in mechanisms:
                raise UpstreamLoginError(
                    f"upstream offers only SASL mechanisms the gateway does not support: {', '.join(mechanisms)}")
            self.method = "scram-sha-256"
            self._scram = ScramClient(cache=self._cache, cache_scope=self._scope)
            return framing.sasl_initial_response(MECHANISM, self._scram.initial())
        if code == AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise ServerProtocolError("upstream sent SASLContinue without SASL")
            return framing.password_message(self._scram.final(body, self._secret_fn))
        if code == AUTH_SASL_FINAL:
            if self._scram is None:
                raise ServerProtocolError("upstream sent SASLFinal without SASL")
            self._scram.verify(body)
            return b""
        if code in _UNSUPPORTED:
            raise UpstreamLoginError(f"upstream asks for {_UNSUPPORTED[code]} authentication, "
                                     "which the gateway does not support")
        raise ServerProtocolError(f"upstream sent unknown authentication request {code}")

    def forget_cached_keys(self) -> None:
        """After a refused login: the cached keys (if any) may be stale; drop them."""
        if self._scram is not None and self._cache is not None and self._scram._cache_key is not None:
            self._cache.discard(self._scram._cache_key)
