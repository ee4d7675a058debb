"""Login phase of a PostgreSQL session: unlock the credential, log in upstream as its DB user, and
look after warm spares (spares.py) so the next session of the same route need not log in itself.

The upstream connection is opened early, while the unlock decides, when the route is known; the
secret never stays on the session (DESIGN §2.1).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from ... import errors as sdm_errors
from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ..net import record_beside_login
from ...vault.secret import SecretValue
from .errors import CANNOT_CONNECT_NOW, INVALID_AUTHORIZATION, WireError, sqlstate_for
from .session_audit import PROTOCOL
from .session_close import _Close
from .upstream import RouteHint, close_opened, connect_upstream, matches, open_early

if TYPE_CHECKING:
    from .server import ListenerContext
    from .spares import WarmSpares
    from .upstream import UpstreamConnection

REPLENISH_FALLBACK = 0.5  # seconds after login when a session that ran nothing yet gets its spare made
REPLENISH_DELAY = 0.02  # seconds after the first answer when the next warm spare is made
_NO_SECRET = SecretValue(b"")


def _drop_early(task: asyncio.Future) -> None:
    """An early upstream open that will not be used: stop it, or close what it opened."""
    task.cancel()
    task.add_done_callback(close_opened)



class LoginPhase:
    """Part of ``Session``: from the client's password (the session token) to a logged-in upstream."""

    if TYPE_CHECKING:  # the Session state used here (set in Session.__init__)
        ctx: ListenerContext
        peer: str | None
        params: dict[str, str]
        cred: UnlockedCredential | None
        upstream: UpstreamConnection | None
        _started_event: bool
        _replenish: asyncio.TimerHandle | None
        _spare_due: bool
        _spares: WarmSpares | None

        # from SessionAudit:
        def _session_event(self, kind: str, status: str = ..., error: str | None = None) -> audit.Event: ...

    async def _unlock(self, token: str) -> UnlockedCredential:
        datasource, credential = self.params["database"], self.params["user"]
        unlock = self.ctx.unlock_client.unlock
        try:
            return await unlock(token, datasource, credential, protocol=PROTOCOL, client_addr=self.peer)
        except sdm_errors.NotFound:
            # `user` may name no credential (e.g. psql's default: the OS user); then let the control
            # plane pick the caller's only lease on the datasource, or list the choices.
            pass
        return await unlock(token, datasource, None, protocol=PROTOCOL, client_addr=self.peer)

    def _open_early(self, route: tuple[str, str], token: str,
                    verdict: bool | None) -> tuple[RouteHint, asyncio.Future] | None:
        """Start reaching the database while the unlock decides (the server forks its backend in
        the meantime), along the route the last unlock of this datasource/credential took. Only for
        a token whose signature checks out locally, so strangers cannot make us open connections."""
        hint = self.ctx.route_hints.get(route)
        throttle = self.ctx.throttle
        if hint is None or verdict is not True:
            return None
        if throttle is not None and not throttle.trusts(token, verdict):
            return None  # an unlock refused this token lately (a revoked session): no database fork for it
        return hint, asyncio.ensure_future(open_early(hint, self.params, self.ctx.connect_timeout))

    async def _login(self, token: str) -> None:
        route = (self.params["database"], self.params["user"])
        spares = self.ctx.spares
        warm = spares is not None and spares.warm_for(self.ctx.route_hints.get(route), self.params)
        # The token's signature and expiry, checked locally once (no database): for the early open
        # and the failed-login throttle.
        verdict = self.ctx.unlock_client.token_verdict(token)
        early = None if warm else self._open_early(route, token, verdict)
        try:
            cred = await self._unlock_or_close(token, verdict)
        except BaseException:
            if early is not None:
                _drop_early(early[1])
            raise
        del token
        self.ctx.route_hints.remember(route, RouteHint(cred.datasource, cred.db_user))
        if early is not None and not matches(early[0], cred):
            _drop_early(early[1])  # the credential moved since: log in the usual way
            early = None
        # The session keeps who/what for audit and policy checks, never the secret (DESIGN §2.1).
        self.cred = replace(cred, secret=_NO_SECRET)
        login = self._take_spare(cred, early)
        if login is None:
            # session.start and the upstream login run side by side (one commit less on the connect
            # path); the client hears AuthenticationOk only once both have succeeded, so nothing is
            # relayed unless the session is on record.
            login = asyncio.ensure_future(connect_upstream(cred, self.params, scram_cache=self.ctx.scram_cache,
                                                           timeout=self.ctx.connect_timeout,
                                                           early=early[1] if early else None))
        del cred  # the secret's last reference from this frame: the login task holds it until done
        try:
            await record_beside_login(self.ctx.audit.write([self._session_event("start")]), login)
        except sdm_errors.AuditUnavailable as exc:
            raise _Close(CANNOT_CONNECT_NOW, exc.message) from None
        self._started_event = True
        try:
            self.upstream = await login
        except WireError as exc:
            raise _Close(exc.sqlstate, exc.message) from None
        if spares is not None and self.upstream.auth_method == "scram-sha-256":
            # The next session's spare, made shortly after this session's first statement is
            # answered (or REPLENISH_FALLBACK s after login): the database's fork must not compete
            # with that statement, nor with what the client does with its first result.
            self._spares = spares
            self._replenish = asyncio.get_running_loop().call_later(REPLENISH_FALLBACK, self._make_spare)

    def _spare_soon(self) -> None:
        """The first answer went out: make the spare REPLENISH_DELAY from now."""
        self._replenish.cancel()
        self._replenish = asyncio.get_running_loop().call_later(REPLENISH_DELAY, self._make_spare)
        self._spare_due = True

    def _make_spare(self) -> None:
        self._replenish = None
        self._spares.replenish(self.cred, self.params)

    def _take_spare(self, cred: UnlockedCredential, early) -> asyncio.Future | None:
        """A warm spare for exactly this unlock (see spares.py) as a finished login, or None."""
        conn = self.ctx.spares.take(cred, self.params) if self.ctx.spares is not None else None
        if conn is None:
            return None
        if early is not None:
            _drop_early(early[1])
        login = asyncio.get_running_loop().create_future()
        login.set_result(conn)
        return login

    async def _unlock_or_close(self, token: str, verdict: bool | None) -> UnlockedCredential:
        throttle = self.ctx.throttle
        if throttle is not None:
            refused = throttle.before_unlock(self.peer, token, verdict)
            if refused is not None:  # counted, and reported when the throttle ends: no event of its own
                raise _Close(INVALID_AUTHORIZATION, refused, status=audit.DENIED)
        try:
            return await self._unlock(token)
        except sdm_errors.SdmError as exc:
            # The control plane has already written the access.denied event for this refusal.
            if throttle is not None and isinstance(exc, sdm_errors.AuthenticationFailed):
                throttle.unlock_failed(self.peer, token, verdict)
            message = exc.message
            if isinstance(exc, sdm_errors.AuthenticationFailed):
                message = f"password authentication failed: {exc.message}"
            raise _Close(sqlstate_for(exc), message, status=audit.DENIED) from None
