"""The front connection's phases as a pure, table-driven state machine.

The table is the whole protocol order in one place: which input is legal in which phase, where it
leads and what the glue must do about it. Anything not in the table is out of order and becomes a
``ClientProtocolError`` (08P01), so the glue never has to reason about order itself.

    INITIAL --ssl--> ENCRYPTED --startup--> AUTH --password--> LOGIN --upstream_ok--> RELAY
       |  \\--gssenc--> GSS_DECLINED --ssl/startup--> ...                                 |
       \\--cancel--> CLOSED                       any --error/close--> CLOSING --> CLOSED <-/
"""

from __future__ import annotations

from enum import Enum

from .errors import ClientProtocolError


class Phase(str, Enum):
    INITIAL = "initial"  # nothing received yet
    GSS_DECLINED = "gss_declined"  # GSSENCRequest answered 'N'; SSLRequest or startup may follow
    ENCRYPTED = "encrypted"  # SSLRequest answered (TLS up, or 'N'); only startup/cancel may follow
    AUTH = "auth"  # asked for the cleartext password (the session token)
    LOGIN = "login"  # unlocking and logging in upstream; the client waits
    RELAY = "relay"  # relaying between client and upstream
    CLOSING = "closing"  # a final ErrorResponse is being sent / upstream torn down
    CLOSED = "closed"


class Input(str, Enum):
    SSL_REQUEST = "ssl_request"
    GSSENC_REQUEST = "gssenc_request"
    CANCEL_REQUEST = "cancel_request"
    STARTUP = "startup"
    PASSWORD = "password"
    UPSTREAM_OK = "upstream_ok"
    TERMINATE = "terminate"  # client sent 'X' or closed its socket
    FAIL = "fail"  # an error to report (auth refused, upstream down, protocol violation, policy)
    CLOSED = "closed"  # the last byte is out


class Action(str, Enum):
    ANSWER_SSL = "answer_ssl"  # 'S' + TLS handshake when configured, else 'N'
    DECLINE_GSS = "decline_gss"  # 'N'
    FORWARD_CANCEL = "forward_cancel"  # look up the key, cancel upstream, close without a reply
    ASK_PASSWORD = "ask_password"  # AuthenticationCleartextPassword
    LOGIN = "login"  # unlock the credential, write session.start, log in upstream
    START_RELAY = "start_relay"  # AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery
    SEND_FATAL = "send_fatal"  # FATAL ErrorResponse, then close
    CLOSE = "close"  # close quietly
    NONE = "none"


P, I, A = Phase, Input, Action

TRANSITIONS: dict[tuple[Phase, Input], tuple[Phase, Action]] = {
    (P.INITIAL, I.SSL_REQUEST): (P.ENCRYPTED, A.ANSWER_SSL),
    (P.INITIAL, I.GSSENC_REQUEST): (P.GSS_DECLINED, A.DECLINE_GSS),
    (P.INITIAL, I.CANCEL_REQUEST): (P.CLOSED, A.FORWARD_CANCEL),
    (P.INITIAL, I.STARTUP): (P.AUTH, A.ASK_PASSWORD),
    (P.GSS_DECLINED, I.SSL_REQUEST): (P.ENCRYPTED, A.ANSWER_SSL),
    (P.GSS_DECLINED, I.CANCEL_REQUEST): (P.CLOSED, A.FORWARD_CANCEL),
    (P.GSS_DECLINED, I.STARTUP): (P.AUTH, A.ASK_PASSWORD),
    (P.ENCRYPTED, I.CANCEL_REQUEST): (P.CLOSED, A.FORWARD_CANCEL),  # CancelRequest over TLS
    (P.ENCRYPTED, I.STARTUP): (P.AUTH, A.ASK_PASSWORD),
    (P.AUTH, I.PASSWORD): (P.LOGIN, A.LOGIN),
    (P.LOGIN, I.UPSTREAM_OK): (P.RELAY, A.START_RELAY),
}
# From every live phase: the client may leave, and any failure ends the connection.
for _phase in (P.INITIAL, P.GSS_DECLINED, P.ENCRYPTED, P.AUTH, P.LOGIN, P.RELAY):
    TRANSITIONS[(_phase, I.TERMINATE)] = (P.CLOSED, A.CLOSE)
    TRANSITIONS[(_phase, I.FAIL)] = (P.CLOSING, A.SEND_FATAL)
TRANSITIONS[(P.CLOSING, I.CLOSED)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSING, I.TERMINATE)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSING, I.FAIL)] = (P.CLOSING, A.NONE)  # a second failure while closing: already closing
TRANSITIONS[(P.CLOSED, I.TERMINATE)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSED, I.FAIL)] = (P.CLOSED, A.NONE)
TRANSITIONS[(P.CLOSED, I.CLOSED)] = (P.CLOSED, A.NONE)

# Human words for the 08P01 message when a packet comes at the wrong time.
_EXPECTED = {
    P.INITIAL: "a startup packet",
    P.GSS_DECLINED: "an SSLRequest or a startup packet",
    P.ENCRYPTED: "a startup packet",
    P.AUTH: "a password message",
    P.LOGIN: "nothing while the login is in progress",
    P.RELAY: "regular messages",
}


class FrontMachine:
    """Holds the current phase; ``advance`` returns the action for a legal input or raises."""

    __slots__ = ("phase",)

    def __init__(self, phase: Phase = Phase.INITIAL):
        self.phase = phase

    def advance(self, event: Input) -> Action:
        try:
            self.phase, action = TRANSITIONS[(self.phase, event)]
        except KeyError:
            expected = _EXPECTED.get(self.phase, "nothing")
            raise ClientProtocolError(
                f"unexpected {event.value.replace('_', ' ')} during {self.phase.value}: expected {expected}"
            ) from None
        return action

    def allows(self, event: Input) -> bool:
        return (self.phase, event) in TRANSITIONS
