"""One ``Session`` per client connection: the asyncio glue around framing, machine and tracker.

Life of a connection (the order is enforced by ``FrontMachine``):

1. startup packets: SSLRequest -> 'S' + TLS (or 'N'), GSSENCRequest -> 'N', CancelRequest -> mapped to
   the upstream backend, StartupMessage -> ask for a cleartext password (= the session token);
2. unlock through the ``UnlockClient`` (dual key; the control plane audits the unlock), write
   ``session.start``, log in upstream as the credential's DB user;
3. relay: two pumps. Client -> upstream audits each statement *before* forwarding it (fail closed);
   upstream -> client only walks message headers and resolves the tracker (rows, duration, errors);
   a third task re-checks the session's right to stay connected every few seconds;
4. closing: a FATAL ErrorResponse when there is something to say, ``session.end`` with the reason.

Nothing here logs or sends a token, a password or a cancel secret.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ... import errors as sdm_errors
from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ...vault.secret import SecretValue
from ..sqlcomment import parse_tags
from . import framing
from .errors import (
    ADMIN_SHUTDOWN,
    CANNOT_CONNECT_NOW,
    FEATURE_NOT_SUPPORTED,
    INTERNAL_ERROR,
    INVALID_AUTHORIZATION,
    INVALID_PASSWORD,
    PROGRAM_LIMIT,
    PROTOCOL_VIOLATION,
    ClientProtocolError,
    ServerProtocolError,
    WireError,
    sqlstate_for,
)
from .machine import FrontMachine, Input, Phase
from .relay import CLIENT_WRITE_HIGH, UpstreamRelay
from .spares import WarmSpares
from .tracker import CLIENT_PARSED, Statement, StatementTracker
from .upstream import (
    REQUIRED_ENCODING,
    RouteHint,
    UpstreamConnection,
    close_opened,
    connect_upstream,
    dropped_params,
    matches,
    open_early,
    send_cancel,
)

if TYPE_CHECKING:
    from .server import ListenerContext

log = logging.getLogger("sdm.wire.postgres")

PROTOCOL = "postgres"
UPSTREAM_READ = 1 << 18  # bytes per upstream read: big chunks keep per-byte overhead low
CLIENT_READ = 1 << 16
QUERY_TEXT_LIMIT = 1 << 20  # audit records keep at most 1 MiB of statement text
X_TYPE, SYNC_TYPE = ord("X"), ord("S")
_FALSE = frozenset({"0", "false", "off", "no", "f", "n"})
_NO_SECRET = SecretValue(b"")
NAME_TOO_LONG = "42622"
POLICY_FAILURES_MAX = 3  # consecutive failed live policy checks before the connection is closed
REPLENISH_FALLBACK = 0.5  # seconds after login when a session that ran nothing yet gets its spare made
REPLENISH_DELAY = 0.02  # seconds after the first answer when the next warm spare is made
PARAMETER_STATUS = ord("S")


class _Close(Exception):
    """Internal: end the connection with this FATAL (or quietly when ``sqlstate`` is None)."""

    def __init__(self, sqlstate: str | None, message: str, *, status: str = audit.ERROR,
                 audit_denied: bool = False):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.status = status
        self.audit_denied = audit_denied


def _peer(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    return str(peer) if peer else None


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _drop_early(task: asyncio.Future) -> None:
    """An early upstream open that will not be used: stop it, or close what it opened."""
    task.cancel()
    task.add_done_callback(close_opened)


def _close_login(task: asyncio.Future) -> None:
    """An abandoned upstream login: close it if it finished anyway."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


class Session:
    def __init__(self, ctx: ListenerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.machine = FrontMachine()
        self.peer = _peer(writer)
        self.tls = False
        self.params: dict[str, str] = {}
        self.cred: UnlockedCredential | None = None
        self.upstream: UpstreamConnection | None = None
        self.tracker = StatementTracker()
        self.cancel_pid: int | None = None
        self._started_event = False
        self._down_splitter: framing.MessageSplitter | None = None
        self._stream_broken: bool | None = None  # set when the relay stopped mid-chunk
        self._progress = asyncio.Event()
        self._shutdown: tuple[str, str] | None = None  # (sqlstate, message) requested from outside
        self._relay_proto: UpstreamRelay | None = None
        self._wake_relay = asyncio.Event()
        self.statements = 0
        self._replenish: asyncio.TimerHandle | None = None  # the next warm spare, once due
        self._spare_due = False  # the first answer went out: the spare's time is set
        self._spares: WarmSpares | None = None  # where this session's replenish goes

    # ---- entry ------------------------------------------------------------------------------

    async def run(self) -> None:
        status, error = audit.OK, None
        try:
            try:
                async with asyncio.timeout(self.ctx.auth_timeout):
                    relay = await self._handshake()
            except TimeoutError:
                raise _Close(PROTOCOL_VIOLATION, "authentication timeout: the login did not finish in time",
                             audit_denied=True) from None
            if relay:
                status, error = await self._relay()
        except _Close as exc:
            status, error = exc.status, exc.message
            if exc.audit_denied and not self._started_event:
                self._post_denied(exc.message)
            await self._send_fatal(exc.sqlstate, exc.message)
        except asyncio.CancelledError:
            status, error = audit.ERROR, "gateway shutting down"
            await self._send_fatal(ADMIN_SHUTDOWN, "terminating connection: the gateway is shutting down")
            raise
        except Exception:
            log.exception("postgres session %s failed", self.peer)
            status, error = audit.ERROR, "internal gateway error"
            await self._send_fatal(INTERNAL_ERROR, "internal gateway error (see the gateway log)")
        finally:
            self._finish(status, error)

    def request_close(self, sqlstate: str, message: str) -> None:
        """Ask a live session to end with a FATAL (gateway shutdown, policy)."""
        self._shutdown = (sqlstate, message)
        self._wake_relay.set()

    # ---- startup, TLS, password ------------------------------------------------------------------

    async def _read_startup_packet(self) -> framing.StartupPacket | None:
        try:
            header = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None  # connected and left without a word (port probe, health check)
            raise ClientProtocolError("incomplete startup packet") from None
        length = framing.startup_packet_length(header)
        try:
            body = await self.reader.readexactly(length - 4)
        except asyncio.IncompleteReadError:
            raise ClientProtocolError("incomplete startup packet") from None
        return framing.parse_startup_packet(header + body)

    async def _handshake(self) -> bool:
        """Everything up to the relay; False when the connection ends without one (cancel, probe)."""
        try:
            while True:
                pkt = await self._read_startup_packet()
                if pkt is None:
                    self.machine.advance(Input.TERMINATE)
                    return False
                if isinstance(pkt, framing.SSLRequest):
                    self.machine.advance(Input.SSL_REQUEST)
                    await self._answer_ssl()
                elif isinstance(pkt, framing.GSSENCRequest):
                    self.machine.advance(Input.GSSENC_REQUEST)
                    self.writer.write(b"N")
                    await self.writer.drain()
                elif isinstance(pkt, framing.CancelRequest):
                    self.machine.advance(Input.CANCEL_REQUEST)
                    await self._forward_cancel(pkt)
                    return False
                else:
                    self.machine.advance(Input.STARTUP)
                    break
            await self._accept_startup(pkt)
            token = await self._read_password()
            if token is None:
                self.machine.advance(Input.TERMINATE)
                return False
            self.machine.advance(Input.PASSWORD)
        except WireError as exc:
            raise _Close(exc.sqlstate, exc.message, audit_denied=True) from None
        await self._login(token)
        self.machine.advance(Input.UPSTREAM_OK)
        await self._start_relay()
        return True

    async def _answer_ssl(self) -> None:
        if self.ctx.tls_context is None:
            self.writer.write(b"N")
            await self.writer.drain()
            return
        if getattr(self.reader, "_buffer", b""):
            # Plaintext sent after SSLRequest would be read as if it came over TLS (CVE-2021-23214).
            raise ClientProtocolError("received unencrypted data after SSL request")
        self.writer.write(b"S")
        await self.writer.drain()
        try:
            await self.writer.start_tls(self.ctx.tls_context)
        except Exception as exc:  # noqa: BLE001 - a failed handshake ends only this connection
            raise _Close(None, f"TLS handshake failed: {type(exc).__name__}") from None
        self.tls = True

    async def _accept_startup(self, pkt: framing.StartupMessage) -> None:
        params = pkt.params
        self.params = params
        for key in ("user", "database"):
            value = params.get(key)
            if value is not None and not _is_utf8(value):
                # Framing decodes with surrogateescape; such a name cannot reach the unlock (or the audit).
                self.params = {**params, key: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")}
                raise ClientProtocolError(f"the startup parameter {key!r} is not valid UTF-8")
        if pkt.minor > 0 or pkt.protocol_extensions:
            self.writer.write(framing.negotiate_protocol_version(0, pkt.protocol_extensions))
        if params.get("replication", "false").lower() not in _FALSE:
            raise ClientProtocolError("replication connections are not supported by the gateway",
                                      sqlstate=FEATURE_NOT_SUPPORTED)
        if self.ctx.require_tls and not self.tls:
            raise ClientProtocolError("this gateway listener requires TLS: connect with sslmode=require",
                                      sqlstate=INVALID_AUTHORIZATION)
        if not params.get("user"):
            raise ClientProtocolError("no credential name given: set the user to a credential name",
                                      sqlstate=INVALID_AUTHORIZATION)
        if not params.get("database"):
            raise ClientProtocolError("no datasource given: set dbname to the datasource name",
                                      sqlstate=INVALID_AUTHORIZATION)
        self.writer.write(framing.authentication_cleartext_password())
        await self.writer.drain()

    async def _read_password(self) -> str | None:
        try:
            header = await self.reader.readexactly(5)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None  # psql hangs up here to prompt for the password, then reconnects
            raise ClientProtocolError("incomplete password message") from None
        mtype, length = struct.unpack("!BI", header)
        if mtype == X_TYPE:
            return None
        if mtype != ord("p"):
            raise ClientProtocolError(f"expected a password message, got message type {chr(mtype)!r}")
        if length < 5 or length > framing.MAX_AUTH_MESSAGE:
            raise ClientProtocolError(f"invalid password message length {length}")
        try:
            body = await self.reader.readexactly(length - 4)
        except asyncio.IncompleteReadError:
            raise ClientProtocolError("incomplete password message") from None
        raw = body.split(b"\0", 1)[0]
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        if not token:
            raise ClientProtocolError("password authentication failed: the password must be a session token "
                                      "(see `sdm session create`)", sqlstate=INVALID_PASSWORD)
        return token

    # ---- unlock and upstream login ----------------------------------------------------------------

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

    def _open_early(self, route: tuple[str, str], token: str) -> tuple[RouteHint, asyncio.Future] | None:
        """Start reaching the database while the unlock decides (the server forks its backend in
        the meantime), along the route the last unlock of this datasource/credential took. Only for
        a token whose signature checks out locally, so strangers cannot make us open connections."""
        hint = self.ctx.route_hints.get(route)
        if hint is None or not self.ctx.unlock_client.token_plausible(token):
            return None
        return hint, asyncio.ensure_future(open_early(hint, self.params, self.ctx.connect_timeout))

    async def _login(self, token: str) -> None:
        route = (self.params["database"], self.params["user"])
        spares = self.ctx.spares
        warm = spares is not None and spares.warm_for(self.ctx.route_hints.get(route), self.params)
        early = None if warm else self._open_early(route, token)
        try:
            cred = await self._unlock_or_close(token)
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
            await self.ctx.audit.write([self._session_event("start")])
        except BaseException as exc:
            login.cancel()
            login.add_done_callback(_close_login)
            if isinstance(exc, sdm_errors.AuditUnavailable):
                raise _Close(CANNOT_CONNECT_NOW, exc.message) from None
            raise
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

    async def _unlock_or_close(self, token: str) -> UnlockedCredential:
        try:
            return await self._unlock(token)
        except sdm_errors.SdmError as exc:
            # The control plane has already written the access.denied event for this refusal.
            message = exc.message
            if isinstance(exc, sdm_errors.AuthenticationFailed):
                message = f"password authentication failed: {exc.message}"
            raise _Close(sqlstate_for(exc), message, status=audit.DENIED) from None

    async def _start_relay(self) -> None:
        up = self.upstream
        self.cancel_pid, secret = self.ctx.cancels.register(up.cancel_target)
        out = [framing.authentication_ok()]
        out += [framing.parameter_status(k, v) for k, v in up.parameters]
        out += up.notices
        out.append(framing.backend_key_data(self.cancel_pid, secret))
        out.append(framing.ready_for_query(up.txn_status))
        self.tracker.txn_status = up.txn_status
        self.writer.write(b"".join(out))
        await self.writer.drain()

    async def _forward_cancel(self, pkt: framing.CancelRequest) -> None:
        target = self.ctx.cancels.lookup(pkt.pid, pkt.secret)
        if target is None:
            log.info("cancel request from %s for an unknown key ignored", self.peer)
            return
        try:
            await send_cancel(target)
        except (WireError, OSError, TimeoutError) as exc:
            log.warning("cancel request from %s could not reach the upstream: %s", self.peer,
                        getattr(exc, "message", type(exc).__name__))

    # ---- relay ----------------------------------------------------------------------------------

    async def _relay(self) -> tuple[str, str | None]:
        transport = self.writer.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        self._relay_proto = UpstreamRelay(self)
        tasks = {
            asyncio.create_task(self._pump_client(), name="pg-client"): "client",
            self._relay_proto.done: "upstream",
            asyncio.create_task(self._watch(), name="pg-watch"): "watch",
        }
        self._relay_proto.attach(self.upstream)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._relay_proto.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Prefer the one that failed (its reason is the interesting one), then the client's own
        # goodbye (the database hanging up right after a Terminate is no error).
        by_role = {tasks[t]: t for t in done}
        first = next((t for t in done if t.exception() is not None), None) \
            or by_role.get("client") or next(iter(done))
        exc = first.exception()
        if exc is not None:
            if isinstance(exc, _Close):
                raise exc
            if isinstance(exc, (ClientProtocolError, ServerProtocolError)):
                raise _Close(exc.sqlstate, exc.message) from None
            if isinstance(exc, (ConnectionError, OSError)):
                return audit.ERROR, f"connection lost: {type(exc).__name__}"
            raise exc
        return first.result()

    async def _pump_client(self) -> tuple[str, str | None]:
        reader, proto = self.reader, self._relay_proto
        # Query/Parse text is capped at what the audit stores: nothing that runs is audited truncated.
        text_limit = min(self.ctx.max_statement_bytes, QUERY_TEXT_LIMIT)
        limits = text_limit + 5  # type-less header (4) + the terminating NUL of the text
        splitter = framing.MessageSplitter(
            full=CLIENT_PARSED.replace("B", "").replace("F", ""), observe="SHX",
            prefix={"B": 1 << 16, "F": 64}, max_full=limits, error=ClientProtocolError)
        tracker = self.tracker
        while True:
            data = await reader.read(CLIENT_READ)
            if not data:
                return audit.OK, None
            try:
                msgs, forward = splitter.feed(data)
            except ClientProtocolError as exc:
                if exc.sqlstate != PROGRAM_LIMIT:
                    raise
                raise ClientProtocolError(
                    f"{exc.message}: statements longer than {text_limit} bytes are refused, because the "
                    "audit records at most that much statement text", sqlstate=PROGRAM_LIMIT) from None
            pos = 0
            pending: list[Statement] = []
            for m in msgs:
                if m.type == X_TYPE:  # Terminate: pass it on, then we are done
                    await self._forward(forward[pos:m.start + 5], pending)
                    return audit.OK, None
                if m.truncated and m.type == ord("B") and m.payload.count(b"\0") < 2:
                    raise ClientProtocolError("Bind message with over-long portal or statement name")
                if m.payload is not None:
                    refused = tracker.check_names(m.type, m.payload)
                    if refused is not None:
                        await self._forward(forward[pos:m.start], pending)  # what came before still runs
                        raise ClientProtocolError(refused, sqlstate=NAME_TOO_LONG)
                if m.payload is not None and tracker.needs_barrier(m.type, m.payload):
                    await self._forward(forward[pos:m.start], pending)
                    pos, pending = m.start, []
                    proto.write(framing.FLUSH)
                    await proto.drain()
                    while tracker.needs_barrier(m.type, m.payload):
                        self._progress.clear()
                        await self._progress.wait()
                stmt = tracker.on_client(m.type, m.payload)
                if stmt is not None:
                    stmt.tag = self._query_event(stmt)
                    pending.append(stmt)
            await self._forward(forward[pos:], pending)

    async def _forward(self, data: bytes, stmts: list[Statement]) -> None:
        """Audit, then forward (DESIGN §2.4: the record exists before the statement runs)."""
        if stmts:
            try:
                await self.ctx.audit.write([s.tag for s in stmts])
            except sdm_errors.AuditUnavailable as exc:
                await self._refuse(stmts, exc.message)
                return
            now = time.perf_counter()
            for s in stmts:
                s.started = now
            self.statements += len(stmts)
        if data:
            self._relay_proto.write(data)
            await self._relay_proto.drain()

    async def _refuse(self, stmts: list[Statement], reason: str) -> None:
        """The audit log is down: refuse. A lone simple Query gets an ERROR and the connection lives."""
        self._relay_proto.flush()
        lone = (len(stmts) == 1 and stmts[0].kind == "query" and self.tracker.pending == 1
                and self._down_splitter is not None and self._down_splitter.at_boundary)
        if lone:
            self.tracker.retract_last()
            self.writer.write(framing.error_response(CANNOT_CONNECT_NOW, f"statement refused: {reason}")
                              + framing.ready_for_query(self.tracker.txn_status))
            await self.writer.drain()
            return
        raise _Close(CANNOT_CONNECT_NOW, f"statement refused: {reason}")

    async def _watch(self) -> tuple[str, str | None]:
        """Close when access ends: grant expiry, revoked session, gateway shutdown."""
        cred = self.cred
        interval = self.ctx.policy_interval
        expires = cred.access_expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)  # the state stores UTC without a zone
        failures = 0
        while True:
            delay = interval
            if expires is not None:
                left = (expires - datetime.now(timezone.utc)).total_seconds()
                if left <= 0:
                    raise _Close(ADMIN_SHUTDOWN, "terminating connection: access to "
                                 f"{cred.datasource.name}/{cred.credential} expired", status=audit.DENIED)
                delay = min(delay, left)
            self._wake_relay.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake_relay.wait()
            except TimeoutError:
                pass
            if self._shutdown is not None:
                sqlstate, message = self._shutdown
                raise _Close(sqlstate, message)
            if self.ctx.policy_check is not None:
                try:
                    reason = await self.ctx.policy_check(cred)
                except Exception as exc:  # noqa: BLE001 - a flaky check must not drop every session
                    log.warning("policy check for session %s failed: %s", cred.session_id, type(exc).__name__)
                    reason = None
                    failures += 1
                    if failures >= POLICY_FAILURES_MAX:
                        raise _Close(ADMIN_SHUTDOWN, "terminating connection: cannot confirm access: "
                                     "control plane unreachable", status=audit.ERROR)
                else:
                    failures = 0
                if reason:
                    raise _Close(ADMIN_SHUTDOWN, f"terminating connection: {reason}", status=audit.DENIED)

    # ---- audit ----------------------------------------------------------------------------------

    def _client_fields(self, text: str | None = None) -> dict:
        fields: dict = {"addr": self.peer}
        if text:
            fields.update(parse_tags(text))
        return fields

    def _session_event(self, kind: str, status: str = audit.OK, error: str | None = None) -> audit.Event:
        cred = self.cred
        return audit.session_event(
            kind, user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, client=self._client_fields(), status=status, error=error,
            details=self._start_details() if kind == "start" else None)

    def _start_details(self) -> dict | None:
        dropped = dropped_params(self.params)
        return {"dropped_startup_parameters": dropped} if dropped else None

    def check_parameter_status(self, payload: bytes) -> None:
        """The server reports a setting: a client_encoding other than UTF8 ends the connection."""
        name, off = framing.read_cstring(payload)
        if name.lower() != "client_encoding":
            return
        value, _ = framing.read_cstring(payload, off)
        if value.upper().replace("-", "").replace("_", "") not in (REQUIRED_ENCODING, "UNICODE"):
            raise ClientProtocolError("the gateway requires client_encoding UTF8 so the audit records what runs")

    def _query_event(self, stmt: Statement) -> audit.Event:
        cred = self.cred
        text = stmt.text
        if len(text) > QUERY_TEXT_LIMIT:
            text = text[:QUERY_TEXT_LIMIT] + f"... [truncated: {len(stmt.text)} characters in all]"
        event = audit.query_event(
            user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, query=text, client=self._client_fields(stmt.text))
        details = {}
        if stmt.kind == "execute" and stmt.statement:
            details["prepared_statement"] = stmt.statement
        elif stmt.kind == "query" and self.tracker.has_named_statements:
            # SQL `EXECUTE name` may run a statement prepared over the protocol: record its text.
            targets = self.tracker.sql_execute_targets(stmt.text)
            if targets:
                details["executes"] = targets
        if details:
            event.details = details
        return event

    def _record_outcomes(self, stmts: list[Statement]) -> None:
        if self._replenish is not None and not self._spare_due:
            self._spare_soon()
        events = []
        for s in stmts:
            if s.tag is None:
                continue
            rows = s.rows if s.rows is not None else (s.counted or None)
            events.append(audit.query_end_event(s.tag, duration_ms=s.duration_ms, rows=rows,
                                                status=s.status, error=s.error))
        self.ctx.audit.post(events)

    def _post_denied(self, reason: str) -> None:
        params = self.params
        self.ctx.audit.post([audit.denied_event(
            user=None, reason=reason, proxy_id=self.ctx.proxy_id, datasource=params.get("database"),
            credential=params.get("user"), protocol=PROTOCOL, client={"addr": self.peer})])

    # ---- closing --------------------------------------------------------------------------------

    async def _send_fatal(self, sqlstate: str | None, message: str) -> None:
        """A last ErrorResponse when the client stream is at a message boundary, then hang up."""
        if self._relay_proto is not None:
            self._relay_proto.flush()
        if sqlstate is not None and self.writer.transport is not None and not self.writer.is_closing():
            splitter = self._down_splitter
            if self._stream_broken is False or (self._stream_broken is None
                                                and (splitter is None or splitter.at_boundary)):
                try:
                    self.writer.write(framing.error_response(sqlstate, message, severity="FATAL"))
                    async with asyncio.timeout(2):
                        await self.writer.drain()
                except (OSError, ConnectionError, TimeoutError, RuntimeError):
                    pass
        if self.machine.allows(Input.FAIL):
            self.machine.advance(Input.FAIL)

    def _finish(self, status: str, error: str | None) -> None:
        unfinished = self.tracker.abandon()
        if unfinished:
            self._record_outcomes(unfinished)
        if self.cancel_pid is not None:
            self.ctx.cancels.unregister(self.cancel_pid)
        if self.upstream is not None:
            try:
                if not self.upstream.writer.is_closing():
                    self.upstream.writer.write(framing.TERMINATE)
            except (OSError, RuntimeError):
                pass
            self.upstream.close()
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass
        if self._started_event:
            self.ctx.audit.post([self._session_event("end", status=status, error=error)])
        if self.machine.phase is not Phase.CLOSED:
            self.machine.phase = Phase.CLOSED
