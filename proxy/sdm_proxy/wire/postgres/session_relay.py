"""Relay phase of a PostgreSQL session: client -> upstream audits each statement *before* forwarding
it (fail closed); upstream -> client runs in ``UpstreamRelay`` (relay.py); a third task re-checks the
session's right to stay connected every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ... import errors as sdm_errors
from ...audit import events as audit
from ..net import POLICY_FAILURES_MAX, UNCONFIRMED_ACCESS
from . import framing
from .errors import (
    ADMIN_SHUTDOWN,
    CANNOT_CONNECT_NOW,
    FEATURE_NOT_SUPPORTED,
    PROGRAM_LIMIT,
    ClientProtocolError,
    ServerProtocolError,
    WireError,
)
from .encoding_guard import needs_known_encoding
from .relay import CLIENT_WRITE_HIGH, UpstreamRelay
from .session_audit import QUERY_TEXT_LIMIT
from .session_close import _Close
from .tracker import CLIENT_PARSED, Statement
from .upstream import REQUIRED_ENCODING, send_cancel

if TYPE_CHECKING:
    from ...audit.query_records import StartedQuery
    from ...unlock.client import UnlockedCredential
    from .server import ListenerContext
    from .tracker import StatementTracker
    from .upstream import UpstreamConnection

log = logging.getLogger("sdm.wire.postgres")

CLIENT_READ = 1 << 16
X_TYPE = ord("X")  # Terminate
# Requests awaiting an answer, past which nothing more is read from the client until some are
# answered. Each costs the tracker a few hundred bytes; a client that only sends (a flood of Syncs,
# never reading) would otherwise grow that queue without end. One read adds at most 13,108 more
# (64 KiB of 5-byte messages), so a session's queue stays under about 12 MB.
MAX_PENDING_ANSWERS = 32_768
# Sync, Flush, Terminate and CopyDone have no body; PostgreSQL answers one with a body with an
# error the tracker would not expect (review: a Flush with one byte shifted every later outcome
# onto the wrong statement), or drops the connection.
NO_BODY_LIMITS = {"S": 4, "H": 4, "X": 4, "c": 4}


class RelayPhase:
    """Part of ``Session``: the relay phase, from AuthenticationOk to the end of the connection
    (and the forwarding of a CancelRequest, which maps the gateway's cancel keys to the upstream)."""

    if TYPE_CHECKING:  # the Session state used here (set in Session.__init__ and the login)
        ctx: ListenerContext
        reader: asyncio.StreamReader
        writer: asyncio.StreamWriter
        peer: str | None
        cred: UnlockedCredential | None
        upstream: UpstreamConnection | None
        tracker: StatementTracker
        cancel_pid: int | None
        statements: int
        _down_splitter: framing.MessageSplitter | None
        _progress: asyncio.Event
        _shutdown: tuple[str, str] | None
        _relay_proto: UpstreamRelay | None
        _wake_relay: asyncio.Event

        # from SessionAudit:
        def _query_event(self, stmt: Statement) -> StartedQuery: ...

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
            full=CLIENT_PARSED.replace("B", "").replace("F", ""), observe="SHXcfd",
            prefix={"B": 1 << 16, "F": 64}, max_full=limits, limits=NO_BODY_LIMITS, error=ClientProtocolError)
        tracker = self.tracker
        while True:
            if tracker.pending >= MAX_PENDING_ANSWERS:
                await self._answers_below(MAX_PENDING_ANSWERS)
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
                if tracker.copy_in:
                    refused = tracker.refused_in_copy(m.type)
                    if refused is not None:  # legitimate clients end the COPY first
                        await self._forward(forward[pos:m.start], pending)
                        raise ClientProtocolError(refused)
                if m.truncated and m.type == ord("B") and m.payload.count(b"\0") < 2:
                    raise ClientProtocolError("Bind message with over-long portal or statement name")
                if m.payload is not None:
                    refused = tracker.check_names(m.type, m.payload)
                    if refused is not None:
                        await self._forward(forward[pos:m.start], pending)  # what came before still runs
                        raise ClientProtocolError(str(refused), sqlstate=refused.sqlstate)
                if m.payload is not None and needs_known_encoding(m.type, m.payload) \
                        and not tracker.encoding_settled():
                    await self._forward(forward[pos:m.start], pending)
                    pos, pending = m.start, []
                    await self._encoding_settled()
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

    async def _encoding_settled(self) -> None:
        """Hold a request that another client_encoding could read differently (``encoding_guard``)
        until the server has reported the encoding (a changed one ends the connection). Checked
        again at each answer: a COPY that starts makes the server ignore the Syncs queued behind it."""
        while not self.tracker.encoding_settled():
            if not self.tracker.encoding_wait_possible():
                raise ClientProtocolError(
                    "statement text whose non-ASCII bytes another client_encoding could pair with a "
                    "backslash, or a non-ASCII statement or portal name, after a Bind or Execute that no "
                    "Sync follows yet: the gateway cannot tell which client_encoding the server will read "
                    "it in; send a Sync first", sqlstate=FEATURE_NOT_SUPPORTED)
            self._progress.clear()
            await self._progress.wait()

    async def _answers_below(self, limit: int) -> None:
        """Read nothing more from the client until the server has answered enough (backpressure:
        the client's own sends then wait, as they would on a database that is slow to answer)."""
        while self.tracker.pending >= limit:
            self._progress.clear()
            await self._progress.wait()

    async def _forward(self, data: bytes, stmts: list[Statement]) -> None:
        """Audit, then forward (DESIGN §2.4: the record exists before the statement runs)."""
        if stmts:
            try:
                await self.ctx.audit.write_records([s.tag.record for s in stmts])
            except sdm_errors.AuditUnavailable as exc:
                await self._refuse(stmts, exc.message)
                return
            now = time.perf_counter()
            for s in stmts:
                s.started = now
            self.statements += len(stmts)
            ignored = [s for s in stmts if s.ignored]
            if ignored:  # sent while the server skips to the next Sync: on record as not executed
                self._record_outcomes(ignored)
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
                        raise _Close(ADMIN_SHUTDOWN, f"terminating connection: {UNCONFIRMED_ACCESS}",
                                     status=audit.ERROR)
                else:
                    failures = 0
                if reason:
                    raise _Close(ADMIN_SHUTDOWN, f"terminating connection: {reason}", status=audit.DENIED)

    # ---- called by UpstreamRelay (relay.py) ---------------------------------------------------

    def check_parameter_status(self, payload: bytes) -> None:
        """The server reports a setting: a client_encoding other than UTF8 ends the connection."""
        name, off = framing.read_cstring(payload)
        if name.lower() != "client_encoding":
            return
        value, _ = framing.read_cstring(payload, off)
        if value.upper().replace("-", "").replace("_", "") not in (REQUIRED_ENCODING, "UNICODE"):
            raise ClientProtocolError("the gateway requires client_encoding UTF8 so the audit records what runs")

