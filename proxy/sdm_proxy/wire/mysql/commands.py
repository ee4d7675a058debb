"""Client commands: classification and the prepared-statement map. Pure.

``classify`` turns one reassembled command payload into a typed ``Command`` that says what to audit
(the SQL and its sqlcommenter tags), who answers it (the upstream, or the gateway itself for
COM_QUIT / COM_CHANGE_USER / COM_RESET_CONNECTION / COM_PROCESS_KILL) and which response shape to
expect (``ResponseKind``, followed by ``responses.ResponseScanner``). Commands the gateway does not
relay are refused with 1047 like an unknown command.

``StatementMap`` keeps COM_STMT_PREPARE's statement id -> SQL per connection, so COM_STMT_EXECUTE is
audited with its text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from ..sqlcomment import parse_tags
from ..text_budget import GATEWAY, PER_CONNECTION, TextBudget, text_size
from .errors import (
    ER_MAX_PREPARED_STMT_COUNT_REACHED,
    ER_NET_READ_ERROR,
    ER_NOT_SUPPORTED_YET,
    ER_UNKNOWN_COM_ERROR,
    SQLSTATE_SYNTAX_OR_ACCESS,
    ClientProtocolError,
    CommandRefused,
)
from .handshake import ChangeUser, parse_change_user
from .packets import PayloadReader
from .response_control import ResponseKind
from .responses import ResponseScanner

__all__ = [
    "LAST_PREPARED_STATEMENT", "ChangeUserCommand", "Com", "Command", "FieldList", "GatewayCommand", "InitDb",
    "ProcessKill", "Query", "ResponseKind", "ResponseScanner", "SetOption", "Simple", "StatementMap",
    "StmtExecute", "StmtFetch", "StmtOnId", "StmtPrepare", "classify",
]


class Com(IntEnum):
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F


MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1
LAST_PREPARED_STATEMENT = 0xFFFFFFFF  # MariaDB: "the statement prepared just before" (pipelining)


# ---- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """Base: ``code`` is the command byte; ``response`` what the upstream answers with."""

    code: int
    response: ResponseKind
    escaped: bool = False  # its text was not UTF-8: recorded escaped (see _decoded)
    # Answered by the gateway (never relayed raw): QUIT, CHANGE_USER, RESET_CONNECTION, PROCESS_KILL.
    by_gateway: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return "COM_" + Com(self.code).name

    def describe(self) -> str:
        """A one-line audit text for commands that carry no SQL."""
        return self.name


@dataclass(frozen=True)
class Query(Command):
    sql: str = ""
    tags: dict = field(default_factory=dict)

    def describe(self) -> str:
        return self.sql


@dataclass(frozen=True)
class StmtPrepare(Command):
    sql: str = ""
    tags: dict = field(default_factory=dict)

    def describe(self) -> str:
        return self.sql


@dataclass(frozen=True)
class StmtExecute(Command):
    statement_id: int = 0
    flags: int = 0

    @property
    def opens_cursor(self) -> bool:
        return bool(self.flags & 0x07)


@dataclass(frozen=True)
class StmtFetch(Command):
    statement_id: int = 0
    rows: int = 0


@dataclass(frozen=True)
class StmtOnId(Command):
    """STMT_CLOSE, STMT_RESET and STMT_SEND_LONG_DATA: a statement id and nothing the gateway needs."""

    statement_id: int = 0


@dataclass(frozen=True)
class InitDb(Command):
    schema: str = ""

    def describe(self) -> str:
        return f"{self.name} {self.schema}"


@dataclass(frozen=True)
class FieldList(Command):
    table: str = ""

    def describe(self) -> str:
        return f"{self.name} {self.table}"


@dataclass(frozen=True)
class SetOption(Command):
    option: int = 0


@dataclass(frozen=True)
class Simple(Command):
    """PING, STATISTICS, PROCESS_INFO, DEBUG: relayed as they are."""


# COM_REFRESH's option bits: FLUSH ... and RESET ... statements in one byte.
_REFRESH_OPTIONS = ((0x01, "GRANT"), (0x02, "LOG"), (0x04, "TABLES"), (0x08, "HOSTS"), (0x10, "STATUS"),
                    (0x20, "THREADS"), (0x40, "SLAVE"), (0x80, "MASTER"))


@dataclass(frozen=True)
class Refresh(Command):
    """COM_REFRESH: relayed as it is; its options go in the audit text (0x80 means RESET MASTER)."""

    options: int | None = None  # None: no option byte (the server answers with an error)

    def describe(self) -> str:
        if self.options is None:
            return self.name
        names = [name for bit, name in _REFRESH_OPTIONS if self.options & bit]
        return f"{self.name} 0x{self.options:02x}" + (f" ({' '.join(names)})" if names else "")


@dataclass(frozen=True)
class GatewayCommand(Command):
    """QUIT and RESET_CONNECTION: the gateway acts itself (closes / resets upstream and its own state)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_gateway", True)


@dataclass(frozen=True)
class ProcessKill(GatewayCommand):
    """COM_PROCESS_KILL: the id is the gateway's connection id, mapped by the gateway."""

    thread_id: int = 0

    def describe(self) -> str:
        return f"KILL {self.thread_id}"


@dataclass(frozen=True)
class ChangeUserCommand(GatewayCommand):
    request: ChangeUser | None = None

    def describe(self) -> str:
        who = self.request.username if self.request else "?"
        db = self.request.database if self.request else None
        return f"{self.name} {who}" + (f" {db}" if db else "")


# Commands that mean nothing through a credential-injecting gateway (replication, server internals)
# or are deprecated ways to do what SQL does (CREATE_DB/DROP_DB/SHUTDOWN): refused like unknown ones.
_REFUSED = {Com.SLEEP, Com.CONNECT, Com.TIME, Com.DELAYED_INSERT, Com.BINLOG_DUMP, Com.TABLE_DUMP,
            Com.CONNECT_OUT, Com.REGISTER_SLAVE, Com.DAEMON, Com.BINLOG_DUMP_GTID, Com.CREATE_DB, Com.DROP_DB,
            Com.SHUTDOWN}


def _reader(payload: bytes, name: str) -> PayloadReader:
    return PayloadReader(payload, error=ClientProtocolError, what=name, code=ER_NET_READ_ERROR, pos=1)


def _decoded(raw: bytes) -> tuple[str, bool]:
    """The audit's text of bytes the server reads in the connection's charset (utf8mb4 with nearly
    every client), and whether it had to be escaped. Bytes that are not UTF-8 (a latin1 or gbk
    client, or garbage) are kept as ``\\xNN`` and backslashes doubled, rather than one U+FFFD for
    all: two statements that differ must not read the same. The record then says
    ``details.escaped``; session.start has the login's charset number."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace"), True


def classify(payload: bytes, *, capabilities: int, multi_statements_allowed: bool = False) -> Command:
    """One client command payload -> a typed Command. Malformed -> ClientProtocolError (closes);
    unknown or not relayed -> CommandRefused (ERR, the connection stays usable)."""
    if not payload:
        raise ClientProtocolError("empty command packet", code=ER_NET_READ_ERROR)
    code = payload[0]
    try:
        com = Com(code)
    except ValueError:
        raise CommandRefused(f"unknown command 0x{code:02x}", code=ER_UNKNOWN_COM_ERROR) from None
    if com in _REFUSED:
        raise CommandRefused(f"{'COM_' + com.name} is not supported through the gateway", code=ER_UNKNOWN_COM_ERROR)
    RK = ResponseKind
    if com is Com.QUERY:
        sql, escaped = _decoded(payload[1:])  # the bytes relayed are untouched
        return Query(code, RK.RESULT, escaped, sql=sql, tags=parse_tags(sql))
    if com is Com.STMT_PREPARE:
        sql, escaped = _decoded(payload[1:])
        return StmtPrepare(code, RK.PREPARE, escaped, sql=sql, tags=parse_tags(sql))
    if com is Com.STMT_EXECUTE:
        r = _reader(payload, "COM_STMT_EXECUTE")
        statement_id = r.u32()
        flags = r.u8() if not r.at_end else 0
        return StmtExecute(code, RK.BINARY_RESULT, statement_id=statement_id, flags=flags)
    if com is Com.STMT_FETCH:
        r = _reader(payload, "COM_STMT_FETCH")
        return StmtFetch(code, RK.FETCH, statement_id=r.u32(), rows=r.u32())
    if com in (Com.STMT_CLOSE, Com.STMT_SEND_LONG_DATA):
        # No answer comes for these, unless the server finds them malformed: then MySQL sends an
        # ERR that would be taken for the next command's answer. So the server's own minimum
        # lengths are checked here (SEND_LONG_DATA: statement id and parameter number).
        r = _reader(payload, "COM_" + com.name)
        statement_id = r.u32()
        if com is Com.STMT_SEND_LONG_DATA:
            r.u16()
        return StmtOnId(code, RK.NONE, statement_id=statement_id)
    if com is Com.STMT_RESET:
        return StmtOnId(code, RK.SIMPLE, statement_id=_reader(payload, "COM_STMT_RESET").u32())
    if com is Com.INIT_DB:
        schema, escaped = _decoded(payload[1:])
        return InitDb(code, RK.SIMPLE, escaped, schema=schema)
    if com is Com.FIELD_LIST:
        r = _reader(payload, "COM_FIELD_LIST")
        table, escaped = _decoded(r.cstring(allow_eof=True))
        return FieldList(code, RK.FIELD_LIST, escaped, table=table)
    if com is Com.SET_OPTION:
        option = _reader(payload, "COM_SET_OPTION").u16()
        if option == MYSQL_OPTION_MULTI_STATEMENTS_ON and not multi_statements_allowed:
            raise CommandRefused("multi-statements are not enabled on the gateway", code=ER_NOT_SUPPORTED_YET,
                                 sqlstate=SQLSTATE_SYNTAX_OR_ACCESS)
        return SetOption(code, RK.SIMPLE, option=option)
    if com in (Com.PING, Com.DEBUG):
        return Simple(code, RK.SIMPLE)
    if com is Com.REFRESH:
        return Refresh(code, RK.SIMPLE, options=payload[1] if len(payload) > 1 else None)
    if com is Com.STATISTICS:
        return Simple(code, RK.STATISTICS)
    if com is Com.PROCESS_INFO:
        return Simple(code, RK.RESULT)
    if com is Com.PROCESS_KILL:
        return ProcessKill(code, RK.SIMPLE, thread_id=_reader(payload, "COM_PROCESS_KILL").u32())
    if com is Com.CHANGE_USER:
        return ChangeUserCommand(code, RK.SIMPLE, request=parse_change_user(payload, capabilities))
    # QUIT and RESET_CONNECTION remain.
    return GatewayCommand(code, RK.NONE if com is Com.QUIT else RK.SIMPLE)


# ---- prepared statements -------------------------------------------------------------------------


class StatementMap:
    """statement id -> SQL for one connection, fed from PREPARE responses (not from requests)."""

    def __init__(self, limit: int = 65536, text_limit: int = PER_CONNECTION, budget: TextBudget = GATEWAY):
        self._sql: dict[int, str] = {}
        self._limit = limit
        self._text_limit = text_limit  # text_size kept in all: 1 MiB statements would add up fast
        self._share = budget.share()  # ... and with every other connection's (wire/text_budget.py)
        self._escaped: set[int] = set()  # ids whose text was recorded escaped
        self.last_id: int | None = None

    def check_room(self, sql: str) -> None:
        """Before a PREPARE is relayed: refuse one whose text the map could not keep, or one more
        statement than it keeps (review: refused after the server's PREPARE_OK went to the client,
        the client held a statement the gateway did not know)."""
        size, held = text_size(sql), self._share.held
        if held + size > self._text_limit:
            raise CommandRefused(f"prepared statements on this connection hold {held >> 20} MiB of text; "
                                 f"close some before preparing more (at most {self._text_limit >> 20} MiB)",
                                 code=ER_MAX_PREPARED_STMT_COUNT_REACHED, sqlstate=SQLSTATE_SYNTAX_OR_ACCESS)
        if not self._share.budget.room_for(size):
            raise CommandRefused(f"the gateway holds too much prepared statement text for all sessions (at most "
                                 f"{self._share.budget.limit >> 20} MiB); try again later, or close some",
                                 code=ER_MAX_PREPARED_STMT_COUNT_REACHED, sqlstate=SQLSTATE_SYNTAX_OR_ACCESS)
        if len(self._sql) >= self._limit:
            raise CommandRefused("too many prepared statements on this connection",
                                 code=ER_MAX_PREPARED_STMT_COUNT_REACHED, sqlstate=SQLSTATE_SYNTAX_OR_ACCESS)

    def __len__(self) -> int:
        return len(self._sql)

    def prepared(self, statement_id: int, sql: str, escaped: bool = False) -> None:
        if statement_id not in self._sql and len(self._sql) >= self._limit:
            # The server's own max_prepared_stmt_count is far lower; this only bounds our memory.
            raise CommandRefused("too many prepared statements on this connection",
                                 code=ER_MAX_PREPARED_STMT_COUNT_REACHED, sqlstate=SQLSTATE_SYNTAX_OR_ACCESS)
        old = self._sql.get(statement_id)
        self._share.change(text_size(sql) - (text_size(old) if old else 0))
        self._sql[statement_id] = sql
        (self._escaped.add if escaped else self._escaped.discard)(statement_id)
        self.last_id = statement_id

    def prepare_failed(self) -> None:
        self.last_id = None  # MariaDB's id -1 then names no statement

    def resolve(self, statement_id: int) -> int | None:
        return self.last_id if statement_id == LAST_PREPARED_STATEMENT else statement_id

    def escaped(self, statement_id: int) -> bool:
        return self.resolve(statement_id) in self._escaped

    def sql_for(self, statement_id: int) -> str | None:
        real = self.resolve(statement_id)
        return None if real is None else self._sql.get(real)

    def closed(self, statement_id: int) -> None:
        real = self.resolve(statement_id)
        if real is not None:
            self._share.change(-text_size(self._sql.pop(real, "")))
            self._escaped.discard(real)

    def clear(self) -> None:
        """After COM_RESET_CONNECTION / COM_CHANGE_USER: the server dropped every statement."""
        self._sql.clear()
        self._escaped.clear()
        self._share.change(-self._share.held)
        self.last_id = None

    def record(self, command: Command, scanner: ResponseScanner | None) -> None:
        """Update from a finished command (PREPARE's answer, or a CLOSE that has none)."""
        if isinstance(command, StmtPrepare) and scanner is not None:
            if scanner.prepared is not None:
                self.prepared(scanner.prepared.statement_id, command.sql, command.escaped)
            else:
                self.prepare_failed()
        elif isinstance(command, StmtOnId) and command.code == Com.STMT_CLOSE:
            self.closed(command.statement_id)
