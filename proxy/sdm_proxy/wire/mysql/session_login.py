"""The login phases of a MySQL session: the handshake up to the token, unlock, upstream login.

The client's HandshakeResponse is never forwarded: the gateway logs in upstream itself, as the
credential's DB user, once the unlock succeeded and ``session.start`` is on record. COM_CHANGE_USER
goes through the same login again.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ... import errors as sdm_errors
from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ...vault.secret import SecretValue
from ..net import record_beside_login
from .channel import UpstreamChannel
from .charset_guard import check_login_charset
from .errors import ClientProtocolError, LoginRefused, LoginThrottled, WireError
from .machine import LoginRequest, StartTLS
from .session_audit import PROTOCOL
from .session_close import _Close
from .tlsbio import TLSServerSession
from .upstream import connect_upstream

_NO_SECRET = SecretValue(b"")


class _Token:
    """The session token, kept for KILL side connections (a new unlock). Never shown."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "_Token(***)"

    __str__ = __repr__



class LoginPhase:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): handshake and login."""

    async def _handshake(self) -> bool:
        """Up to the OK after the login; False when the client leaves without logging in."""
        front = self.front
        try:
            while True:
                event = front.next_event()
                if event is None:
                    self._flush()
                    data = await self.client.read()
                    if data is None:
                        if self._goodbye is not None:
                            raise _Close(self._goodbye[0])
                        continue
                    if not data:
                        front.quit()
                        return False  # connected and left (port probe, health check, a client giving up)
                    front.receive_data(data)
                    continue
                if isinstance(event, StartTLS):
                    self.client.start_tls(TLSServerSession(self.ctx.tls_context, event.pending))
                    front.tls_established()
                    continue
                if isinstance(event, LoginRequest):
                    break
        except ClientProtocolError as exc:
            if self.client.tls is not None and not self.client.tls.handshake_done:
                raise _Close(None, reason=exc.message) from None  # no ERR in clear into a TLS handshake
            raise _Close(exc, audit_denied=True) from None
        except WireError as exc:  # InsecureTransport and the like
            raise _Close(exc, audit_denied=True) from None
        await self._log_in(event)
        front.login_succeeded(status=self.status_flags)
        self._flush()
        return True

    async def _unlock(self, req: LoginRequest, token: str) -> UnlockedCredential:
        unlock = self.ctx.unlock_client.unlock
        try:
            return await unlock(token, req.datasource, req.credential or None, protocol=PROTOCOL,
                                client_addr=self.peer)
        except sdm_errors.NotFound:
            if not req.credential:
                raise
            # `user` may name no credential (the mariadb client defaults it to the OS user): let the
            # control plane pick the caller's only lease on the datasource, or list the choices.
        return await unlock(token, req.datasource, None, protocol=PROTOCOL, client_addr=self.peer)

    async def _log_in(self, req: LoginRequest) -> None:
        """Unlock, record session.start, log in upstream. Raises _Close on any refusal."""
        self._login = req
        try:
            check_login_charset(req.charset)
        except WireError as exc:
            raise _Close(exc, status=audit.DENIED, audit_denied=True) from None
        if not req.datasource:
            raise _Close(LoginRefused("no datasource given: set the database to the datasource name"),
                         status=audit.DENIED, audit_denied=True)
        throttle = self.ctx.throttle
        verdict = self.ctx.unlock_client.token_verdict(req.token) if throttle is not None else None
        if throttle is not None:
            refused = throttle.before_unlock(self.peer, req.token, verdict)
            if refused is not None:  # counted, and reported when the throttle ends: no event of its own
                raise _Close(LoginThrottled(refused), status=audit.DENIED)
        try:
            cred = await self._unlock(req, req.token)
        except sdm_errors.SdmError as exc:
            # The control plane has already written the access.denied event for this refusal.
            if throttle is not None and isinstance(exc, sdm_errors.AuthenticationFailed):
                throttle.unlock_failed(self.peer, req.token, verdict)
            raise _Close(exc, status=audit.DENIED, reason=exc.message) from None
        if cred.datasource.type != "mysql":
            message = (f"datasource {cred.datasource.name} is a {cred.datasource.type} datasource: "
                       "connect through the gateway's listener for that protocol")
            self.ctx.audit.post([audit.denied_event(
                user=cred.user, reason=message, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
                datasource=cred.datasource.name, credential=cred.credential, protocol=PROTOCOL,
                client={"addr": self.peer})])
            raise _Close(LoginRefused(message), status=audit.DENIED)
        self._token = _Token(req.token)
        # The session keeps who/what for audit and policy checks, never the secret (DESIGN §2.1):
        # only the login task below holds it, until it is done.
        self.cred = replace(cred, secret=_NO_SECRET)
        attrs = {"_client_name": "sdm-gateway", "sdm_user": cred.user,
                 "sdm_connection_id": str(self.connection_id)}
        if req.attrs.get("program_name"):
            attrs["program_name"] = req.attrs["program_name"][:256]
        # session.start and the upstream login run side by side; the client hears OK only once both
        # have succeeded, so nothing is relayed unless the session is on record.
        login = asyncio.ensure_future(connect_upstream(
            cred, capabilities=req.capabilities, charset=req.charset, attrs=attrs,
            timeout=self.ctx.connect_timeout))
        del cred  # the login task holds the secret until it is done
        try:
            await record_beside_login(self.ctx.audit.write([self._session_event("start")]), login)
        except sdm_errors.AuditUnavailable as exc:
            raise _Close(exc) from None
        self._started_event = True
        try:
            up = await login
        except WireError as exc:
            raise _Close(exc) from None
        self.up = UpstreamChannel(self.client)
        self.up.attach(up.reader, up.writer)
        self.up.on_idle_close = self._on_upstream_gone
        self.upstream_thread = up.thread_id
        self.status_flags = up.status

    async def _change_user(self, req: LoginRequest) -> None:
        """A new login on this connection: the old upstream goes, a new one (maybe another user) comes."""
        if self._started_event:
            self.ctx.audit.post([self._session_event("end", error="COM_CHANGE_USER")])
            self._started_event = False
        self._close_upstream()
        self.cred, self.upstream_thread, self._token = None, None, None
        self._query_records = None  # the next command is recorded under the new login's identity
        self.statements.clear()
        await self._log_in(req)
        self.front.login_succeeded(status=self.status_flags)
        self._flush()
