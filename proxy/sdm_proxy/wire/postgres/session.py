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

Step 1 is here; ``Session`` takes step 2 from ``LoginPhase`` (session_login.py), step 3 from
``RelayPhase`` (session_relay.py), step 4 from ``ClosingPhase`` (session_close.py) and its audit
events from ``SessionAudit`` (session_audit.py).

Nothing in these modules logs or sends a token, a password or a cancel secret.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING

from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ..login_slots import LoginSlot
from ..net import peer_text
from . import framing
from .errors import (
    ADMIN_SHUTDOWN,
    FEATURE_NOT_SUPPORTED,
    INTERNAL_ERROR,
    INVALID_AUTHORIZATION,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    ClientProtocolError,
    WireError,
)
from .machine import FrontMachine, Input
from .relay import UpstreamRelay
from .session_audit import QUERY_TEXT_LIMIT, SessionAudit
from .session_close import ClosingPhase, _Close
from .session_login import LoginPhase
from .session_relay import X_TYPE, RelayPhase
from .spares import WarmSpares
from .tracker import StatementTracker
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .server import ListenerContext

__all__ = ["QUERY_TEXT_LIMIT", "Session"]  # QUERY_TEXT_LIMIT (session_audit.py) re-exported for server.py

log = logging.getLogger("sdm.wire.postgres")

_FALSE = frozenset({"0", "false", "off", "no", "f", "n"})


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Session(LoginPhase, RelayPhase, SessionAudit, ClosingPhase):
    """One client connection, from its first startup packet to its ``session.end``."""

    def __init__(self, ctx: ListenerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.machine = FrontMachine()
        self.peer = peer_text(writer.get_extra_info("peername"))
        self.tls = False
        self.params: dict[str, str] = {}
        self.cred: UnlockedCredential | None = None
        self.upstream: UpstreamConnection | None = None
        self.tracker = StatementTracker()
        self._query_records = None  # SessionAudit's, made at the first statement
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
        self.login_slot: LoginSlot | None = None  # the listener's, given back once the login ends
        self.refusal: tuple[str, str] | None = None  # (sqlstate, message): refuse once the startup is in

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
            if self.login_slot is not None:
                self.login_slot.release()
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
            if self.refusal is not None:
                # As PostgreSQL refuses (too many clients): after TLS and the startup packet, so that
                # the client reads the message (libpq ignores one sent in reply to its SSLRequest).
                raise _Close(*self.refusal)
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
