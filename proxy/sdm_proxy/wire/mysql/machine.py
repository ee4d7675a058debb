"""The front connection (client <-> gateway) as a pure, table-driven, sans-I/O state machine.

The table is the whole login order in one place; anything not in it is out of order and becomes a
``ClientProtocolError``, so the glue never reasons about order itself.

    HANDSHAKE_SENT --ssl_request--> TLS_HANDSHAKE --tls_done--> TLS_READY
         |                                                         |
         +--handshake_response--> AUTH_SWITCH_SENT <---------------+
         |   (AuthSwitchRequest to mysql_clear_password)  |
         +--response_with_token--+          token         |
                                 v            v           |
                                LOGIN  <------+           |   (unlock, audit, upstream login)
                                  | upstream_ok           |
                                  v                       |
                               COMMAND --change_user------+
                                  | quit / fail
                                  v
                          CLOSING --closed--> CLOSED

``FrontConnection`` wraps the table with the packet reader and the handshake messages, h11-style:
the glue feeds bytes with ``receive_data``, pulls events with ``next_event``, sends whatever
``data_to_send`` returns, and reports outcomes (``tls_established``, ``login_succeeded``, ``fail``).
Rule for the glue: send ``data_to_send()`` before waiting for more input (``next_event`` returning
None after queueing the AuthSwitchRequest means "the client now waits for it").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .auth_packets import (
    CLEAR_PASSWORD,
    build_clear_password_switch,
    parse_clear_password,
)
from .commands import ChangeUserCommand
from .errors import (
    ER_HANDSHAKE_ERROR,
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_CONNECTION,
    SQLSTATE_REJECTED,
    ClientProtocolError,
    InsecureTransport,
)
from .flags import Cap, Status, front_capabilities
from .handshake import (
    DEFAULT_SERVER_VERSION,
    HandshakeResponse,
    SSLRequest,
    build_handshake,
    new_scramble,
    parse_client_hello,
)
from .ok_err_eof import build_err_for, build_ok
from .packets import (
    MAX_COMMAND_PACKET,
    MAX_HANDSHAKE_PACKET,
    Packet,
    PacketReader,
    frame_packets,
)


class Phase(str, Enum):
    HANDSHAKE_SENT = "handshake_sent"
    TLS_HANDSHAKE = "tls_handshake"  # SSLRequest accepted; the glue runs the TLS handshake
    TLS_READY = "tls_ready"  # TLS is up; the HandshakeResponse41 comes next
    AUTH_SWITCH_SENT = "auth_switch_sent"  # asked for the token with mysql_clear_password
    LOGIN = "login"  # unlocking and logging in upstream; the client waits
    COMMAND = "command"
    CLOSING = "closing"  # a final ERR is going out
    CLOSED = "closed"


class Input(str, Enum):
    SSL_REQUEST = "ssl_request"
    TLS_DONE = "tls_done"
    HANDSHAKE_RESPONSE = "handshake_response"
    RESPONSE_WITH_TOKEN = "response_with_token"  # the client used mysql_clear_password right away
    TOKEN = "token"
    UPSTREAM_OK = "upstream_ok"
    COMMAND = "command"
    CHANGE_USER = "change_user"
    QUIT = "quit"  # COM_QUIT or the client closed its socket
    FAIL = "fail"
    CLOSED = "closed"


class Action(str, Enum):
    START_TLS = "start_tls"
    ASK_TOKEN = "ask_token"  # AuthSwitchRequest(mysql_clear_password)
    LOGIN = "login"
    SEND_OK = "send_ok"  # login done: OK, then commands
    RELAY = "relay"
    SEND_ERR = "send_err"  # final ERR, then close
    CLOSE = "close"
    NONE = "none"


P, I, A = Phase, Input, Action

TRANSITIONS: dict[tuple[Phase, Input], tuple[Phase, Action]] = {
    (P.HANDSHAKE_SENT, I.SSL_REQUEST): (P.TLS_HANDSHAKE, A.START_TLS),
    (P.HANDSHAKE_SENT, I.HANDSHAKE_RESPONSE): (P.AUTH_SWITCH_SENT, A.ASK_TOKEN),
    (P.HANDSHAKE_SENT, I.RESPONSE_WITH_TOKEN): (P.LOGIN, A.LOGIN),
    (P.TLS_HANDSHAKE, I.TLS_DONE): (P.TLS_READY, A.NONE),
    (P.TLS_READY, I.HANDSHAKE_RESPONSE): (P.AUTH_SWITCH_SENT, A.ASK_TOKEN),
    (P.TLS_READY, I.RESPONSE_WITH_TOKEN): (P.LOGIN, A.LOGIN),
    (P.AUTH_SWITCH_SENT, I.TOKEN): (P.LOGIN, A.LOGIN),
    (P.LOGIN, I.UPSTREAM_OK): (P.COMMAND, A.SEND_OK),
    (P.COMMAND, I.COMMAND): (P.COMMAND, A.RELAY),
    (P.COMMAND, I.CHANGE_USER): (P.AUTH_SWITCH_SENT, A.ASK_TOKEN),
}
_LIVE = (P.HANDSHAKE_SENT, P.TLS_HANDSHAKE, P.TLS_READY, P.AUTH_SWITCH_SENT, P.LOGIN, P.COMMAND)
for _phase in _LIVE:
    TRANSITIONS[(_phase, I.QUIT)] = (P.CLOSED, A.CLOSE)
    TRANSITIONS[(_phase, I.FAIL)] = (P.CLOSING, A.SEND_ERR)
TRANSITIONS[(P.CLOSING, I.CLOSED)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSING, I.QUIT)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSING, I.FAIL)] = (P.CLOSING, A.NONE)  # already failing: one ERR is enough
for _input in (I.QUIT, I.FAIL, I.CLOSED):
    TRANSITIONS[(P.CLOSED, _input)] = (P.CLOSED, A.NONE)

_EXPECTED = {
    P.HANDSHAKE_SENT: "a handshake response or SSL request",
    P.TLS_HANDSHAKE: "the TLS handshake",
    P.TLS_READY: "a handshake response",
    P.AUTH_SWITCH_SENT: "the password (session token)",
    P.LOGIN: "nothing while the login is in progress",
    P.COMMAND: "a command",
}


class FrontMachine:
    """Holds the phase; ``advance`` returns the action for a legal input or raises."""

    __slots__ = ("phase",)

    def __init__(self, phase: Phase = Phase.HANDSHAKE_SENT):
        self.phase = phase

    def advance(self, event: Input) -> Action:
        try:
            self.phase, action = TRANSITIONS[(self.phase, event)]
        except KeyError:
            expected = _EXPECTED.get(self.phase, "nothing")
            raise ClientProtocolError(f"unexpected {event.value.replace('_', ' ')} during "
                                      f"{self.phase.value.replace('_', ' ')}: expected {expected}",
                                      code=ER_HANDSHAKE_ERROR) from None
        return action

    def allows(self, event: Input) -> bool:
        return (self.phase, event) in TRANSITIONS


# ---- events for the glue -----------------------------------------------------------------------


@dataclass(frozen=True)
class StartTLS:
    """Start server-side TLS, then call ``tls_established``.

    ``pending``: bytes already received after the SSLRequest. Clients send their ClientHello
    without waiting, so these are the start of the TLS handshake and must go to the TLS layer
    (see ``tlsbio.TLSServerSession``), never be dropped or parsed as MySQL packets.
    """

    pending: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class LoginRequest:
    """Who wants in: ``datasource`` from the database field, ``credential`` from the user field."""

    credential: str
    datasource: str | None
    token: str = field(repr=False)  # the session token: a bearer credential
    capabilities: int = 0
    charset: int = 0
    attrs: dict[str, str] = field(default_factory=dict)
    change_user: bool = False


@dataclass(frozen=True)
class CommandReceived:
    packet: Packet


Event = StartTLS | LoginRequest | CommandReceived


class FrontConnection:
    """The client leg, sans I/O. See the module docstring for the call order."""

    def __init__(self, *, connection_id: int, tls_available: bool, tls_required: bool,
                 server_version: str = DEFAULT_SERVER_VERSION, scramble: bytes | None = None,
                 local_infile: bool = False, multi_statements: bool = False,
                 max_command_packet: int = MAX_COMMAND_PACKET):
        if tls_required and not tls_available:
            raise ValueError("TLS is required but no certificate is configured")
        self.connection_id = connection_id
        self.tls_available = tls_available
        self.tls_required = tls_required
        self.tls_active = False
        self.server_version = server_version
        self.scramble = scramble or new_scramble()
        self.advertised = front_capabilities(tls=tls_available, local_infile=local_infile,
                                             multi_statements=multi_statements)
        self.capabilities = 0  # negotiated: the client's flags that we also offer
        self.charset = 0
        self.response: HandshakeResponse | None = None
        self.machine = FrontMachine()
        self._reader = PacketReader(limit=MAX_HANDSHAKE_PACKET, error=ClientProtocolError, expect_seq=1)
        self._max_command = max_command_packet
        self._seq = 1  # the sequence id of the gateway's next packet to the client
        self._protocol41 = True
        self._pending_change = None  # a COM_CHANGE_USER waiting for its token
        self._out: list[bytes] = [frame_packets(self._greeting(), 0)[0]]

    # -- I/O boundary ----------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.machine.phase

    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def receive_data(self, data: bytes) -> None:
        if self.phase is Phase.TLS_HANDSHAKE:
            raise ClientProtocolError("unexpected data during the TLS handshake", code=ER_HANDSHAKE_ERROR)
        self._reader.feed(data)

    def next_event(self) -> Event | None:
        """The next thing the glue must act on, or None when more bytes are needed."""
        phase = self.phase
        if phase in (Phase.TLS_HANDSHAKE, Phase.LOGIN, Phase.CLOSING, Phase.CLOSED):
            return None
        packet = self._reader.next_packet()
        if packet is None:
            return None
        self._seq = packet.next_seq
        if phase is Phase.COMMAND:
            self.machine.advance(Input.COMMAND)
            self._reader.expect_seq = 0  # the next command starts a new sequence
            return CommandReceived(packet)
        if phase is Phase.AUTH_SWITCH_SENT:
            token = parse_clear_password(packet.payload)
            self.machine.advance(Input.TOKEN)
            return self._login_request(token)
        return self._on_hello(packet)

    # -- outcomes reported by the glue --------------------------------------------------------------

    def tls_established(self) -> None:
        self.machine.advance(Input.TLS_DONE)
        self.tls_active = True

    def login_succeeded(self, *, status: int = int(Status.AUTOCOMMIT)) -> None:
        """Queue the OK that ends the login; commands follow (each starting at sequence id 0)."""
        self.machine.advance(Input.UPSTREAM_OK)
        self._send(build_ok(status=status))
        self._reader.limit = self._max_command
        self._reader.expect_seq = 0

    def change_user(self, command: ChangeUserCommand, packet: Packet) -> None:
        """COM_CHANGE_USER: ask for a token again; the next event is a LoginRequest(change_user=True)."""
        request = command.request
        self._seq = packet.next_seq
        self.machine.advance(Input.CHANGE_USER)
        self._pending_change = request
        self._reader.limit = MAX_HANDSHAKE_PACKET
        self._send(build_clear_password_switch(self.scramble))

    def fail(self, exc: BaseException, *, seq: int | None = None) -> None:
        """Queue the final ERR for ``exc``; the glue then closes.

        The sequence id is the one the client expects next (after a login packet or a command
        received whole). ``seq`` overrides it: 0 for a goodbye between commands (shutdown, killed;
        what mysqld sends), 1 for a command the gateway could not even read (bad framing).
        """
        if self.machine.advance(Input.FAIL) is Action.SEND_ERR:
            if seq is not None:
                self._seq = seq & 0xFF
            self._send(build_err_for(exc, protocol41=self._protocol41))

    def reply_error(self, exc: BaseException, packet: Packet) -> None:
        """Answer one command with an ERR and stay in the command phase (a refused command)."""
        data, _ = frame_packets(build_err_for(exc, protocol41=self._protocol41), packet.next_seq)
        self._out.append(data)

    def quit(self) -> None:
        self.machine.advance(Input.QUIT)

    def closed(self) -> None:
        if self.phase is Phase.CLOSING:
            self.machine.advance(Input.CLOSED)
        elif self.phase is not Phase.CLOSED:
            self.machine.advance(Input.QUIT)

    # -- internals --------------------------------------------------------------------------------

    def _greeting(self) -> bytes:
        return build_handshake(connection_id=self.connection_id, scramble=self.scramble,
                               capabilities=self.advertised, server_version=self.server_version)

    def _send(self, payload: bytes) -> None:
        data, self._seq = frame_packets(payload, self._seq)
        self._out.append(data)
        self._reader.expect_seq = self._seq

    def _on_hello(self, packet: Packet) -> Event | None:
        payload = packet.payload
        if len(payload) >= 2 and not payload[1] & (Cap.PROTOCOL_41 >> 8):
            self._protocol41 = False  # so the ERR we answer with is one this client can read
        hello = parse_client_hello(payload)
        if isinstance(hello, SSLRequest):
            if not self.tls_available or self.phase is not Phase.HANDSHAKE_SENT:
                raise ClientProtocolError("TLS is not available on this listener", code=ER_HANDSHAKE_ERROR)
            self.machine.advance(Input.SSL_REQUEST)
            self._reader.expect_seq = self._seq
            # Whatever followed the SSLRequest is TLS (a ClientHello), or garbage the TLS layer rejects.
            return StartTLS(pending=self._reader.take_unread())
        if hello.capabilities & Cap.SSL and not self.tls_active:
            raise ClientProtocolError("the client claims TLS without an SSL request", code=ER_HANDSHAKE_ERROR)
        if self.tls_required and not self.tls_active:
            raise InsecureTransport("connections to this gateway listener must use TLS (ssl-mode=REQUIRED)")
        if hello.capabilities & Cap.COMPRESS:
            raise ClientProtocolError("the gateway does not support the compressed protocol",
                                      code=ER_HANDSHAKE_ERROR, sqlstate=SQLSTATE_CONNECTION)
        self.response = hello
        self.capabilities = hello.capabilities & self.advertised
        self.charset = hello.charset
        if hello.auth_plugin == CLEAR_PASSWORD and hello.auth_response:
            self.machine.advance(Input.RESPONSE_WITH_TOKEN)
            return self._login_request(parse_clear_password(hello.auth_response))
        if not hello.capabilities & Cap.PLUGIN_AUTH:
            raise ClientProtocolError("the client cannot switch authentication method (no CLIENT_PLUGIN_AUTH); "
                                      "the gateway needs mysql_clear_password", code=ER_NOT_SUPPORTED_AUTH_MODE,
                                      sqlstate=SQLSTATE_REJECTED)
        self.machine.advance(Input.HANDSHAKE_RESPONSE)
        self._send(build_clear_password_switch(self.scramble))
        return None

    def _login_request(self, token: str) -> LoginRequest:
        pending = self._pending_change
        if pending is not None:
            self._pending_change = None
            self.charset = pending.charset or self.charset  # the new login's, for its session.start too
            return LoginRequest(credential=pending.username, datasource=pending.database, token=token,
                                capabilities=self.capabilities, charset=self.charset,
                                attrs=pending.attrs, change_user=True)
        hello = self.response
        return LoginRequest(credential=hello.username, datasource=hello.database, token=token,
                            capabilities=self.capabilities, charset=self.charset, attrs=hello.attrs)

    def __repr__(self) -> str:
        return f"FrontConnection(id={self.connection_id}, phase={self.phase.value})"

