"""A blocking, thread-per-connection relay built only from the pure MySQL layers. Test-only.

Why it exists: it proves the pure pieces (FrontConnection, UpstreamLogin, classify, ResponseScanner,
StatementMap, parse_kill) compose into a working proxy for real clients (PyMySQL, the mariadb CLI)
against a real MariaDB, before the asyncio glue exists. It is deliberately small and is not the
product: no unlock client, no audit log, a token -> login-key table instead of sessions.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from dataclasses import dataclass, field

from sdm_proxy import errors as sdm_errors
from sdm_proxy.wire.mysql.auth import UpstreamLogin
from sdm_proxy.wire.mysql.commands import (
    ChangeUserCommand,
    Com,
    GatewayCommand,
    ProcessKill,
    Query,
    ResponseKind,
    ResponseScanner,
    StatementMap,
    StmtExecute,
    StmtPrepare,
    classify,
)
from sdm_proxy.wire.mysql.errors import (
    ER_KILL_DENIED_ERROR,
    ER_NO_SUCH_THREAD,
    ClientProtocolError,
    CommandRefused,
    ServerProtocolError,
    WireError,
)
from sdm_proxy.wire.mysql.kill import parse_kill
from sdm_proxy.wire.mysql.machine import (
    CommandReceived,
    FrontConnection,
    LoginRequest,
    StartTLS,
)
from sdm_proxy.wire.mysql.packets import frame
from sdm_proxy.wire.mysql.tlsbio import TLSServerSession

DATASOURCE = "mydb"


class _TLSSocket:
    """Just enough of a socket over a TLSServerSession for this blocking relay."""

    def __init__(self, sock: socket.socket, tls: TLSServerSession):
        self.sock, self.tls = sock, tls
        self._plain = tls.start()
        self._flush()

    def _flush(self) -> None:
        out = self.tls.data_to_send()
        if out:
            self.sock.sendall(out)

    def recv(self, n: int) -> bytes:
        while not self._plain and not self.tls.closed:
            data = self.sock.recv(1 << 16)
            self._plain += self.tls.receive(data)
            self._flush()
            if not data:
                break
        out, self._plain = self._plain[:n], self._plain[n:]
        return out

    def sendall(self, data: bytes) -> None:
        self.tls.send(data)
        self._flush()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Record:
    """What an audit event would hold."""

    user: str
    kind: str
    text: str
    rows: int = 0
    affected: int = 0
    error: int | None = None
    tags: dict = field(default_factory=dict)


@dataclass
class Conn:
    gateway_id: int
    user: str
    upstream_thread: int
    upstream: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)


class PureRelay:
    def __init__(self, server, tokens: dict[str, str], *, tls: ssl.SSLContext | None = None,
                 tls_required: bool = False):
        self.server = server
        self.tokens = tokens  # token -> analyst name; the credential is the MySQL user field
        self.tls = tls
        self.tls_required = tls_required
        self.records: list[Record] = []
        self.errors: list[BaseException] = []
        self.conns: dict[int, Conn] = {}
        self._ids = itertools.count(1000)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    # -- one connection -------------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        gateway_id = next(self._ids)
        front = FrontConnection(connection_id=gateway_id, tls_available=self.tls is not None,
                                tls_required=self.tls_required)
        state: dict = {"conn": None, "statements": StatementMap()}
        try:
            client.sendall(front.data_to_send())
            while True:
                event = front.next_event()
                if event is None:
                    out = front.data_to_send()  # e.g. the AuthSwitchRequest: flush before waiting
                    if out:
                        client.sendall(out)
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    front.receive_data(data)
                    continue
                if isinstance(event, StartTLS):
                    client = _TLSSocket(client, TLSServerSession(self.tls, event.pending))
                    front.tls_established()
                elif isinstance(event, LoginRequest):
                    self._login(front, event, state, gateway_id)
                    client.sendall(front.data_to_send())
                elif isinstance(event, CommandReceived) and not self._command(front, client, event.packet, state):
                    return
                out = front.data_to_send()
                if out:
                    client.sendall(out)
        except (WireError, sdm_errors.SdmError) as exc:
            self.errors.append(exc)
            front.fail(exc)
            try:
                client.sendall(front.data_to_send())
            except OSError:
                pass
        except OSError:
            pass
        finally:
            conn = state["conn"]
            if conn is not None:
                self.conns.pop(gateway_id, None)
                conn.upstream.close()
            client.close()

    def _login(self, front: FrontConnection, req: LoginRequest, state: dict, gateway_id: int) -> None:
        user = self.tokens.get(req.token)
        if user is None:
            raise sdm_errors.AuthenticationFailed("invalid or expired session token")
        if req.datasource != DATASOURCE:
            raise sdm_errors.AccessDenied(f"no datasource named {req.datasource!r} for you")
        if req.credential not in self.server.logins:
            raise sdm_errors.AccessDenied(f"no lease on credential {req.credential!r}")
        login = self.server.logins[req.credential]
        machine = UpstreamLogin(username=login.username, database=self.server.database,
                                front_capabilities=req.capabilities, charset=req.charset,
                                attrs={"_client_name": "sdm-gateway", "sdm_user": user})
        up = socket.create_connection((self.server.host, self.server.port), timeout=30)
        try:
            while True:
                data = up.recv(1 << 16)
                if not data:
                    raise ServerProtocolError("upstream closed during login")
                step = machine.receive_data(data, lambda: login.password.encode())
                if step.send:
                    up.sendall(step.send)
                if step.done:
                    break
        except BaseException:
            up.close()
            raise
        old = state["conn"]
        if old is not None:
            old.upstream.close()
        state["statements"].clear()
        state["conn"] = self.conns[gateway_id] = Conn(gateway_id, user, machine.thread_id, up)
        front.login_succeeded(status=machine.ok.status)

    def _command(self, front: FrontConnection, client: socket.socket, packet, state: dict) -> bool:
        conn: Conn = state["conn"]
        statements: StatementMap = state["statements"]
        try:
            cmd = classify(packet.payload, capabilities=front.capabilities)
            kill = parse_kill(cmd.sql) if isinstance(cmd, (Query, StmtPrepare)) else None
            if isinstance(cmd, ProcessKill):
                kill_id, query_only = cmd.thread_id, False
            elif kill is not None:
                if isinstance(cmd, StmtPrepare):
                    raise CommandRefused("KILL cannot be prepared through the gateway")
                kill_id, query_only = kill.thread_id, kill.query_only
            else:
                kill_id = None
        except CommandRefused as exc:
            front.reply_error(exc, packet)
            return True
        if cmd.code == Com.QUIT:
            front.quit()
            return False
        if isinstance(cmd, ChangeUserCommand):
            front.change_user(cmd, packet)
            return True
        if kill_id is not None:
            target = self.conns.get(kill_id)
            if target is None:
                front.reply_error(CommandRefused(f"Unknown thread id: {kill_id}", code=ER_NO_SUCH_THREAD,
                                                 sqlstate="HY000"), packet)
                return True
            if target.user != conn.user:
                front.reply_error(CommandRefused(f"You are not owner of thread {kill_id}",
                                                 code=ER_KILL_DENIED_ERROR, sqlstate="HY000"), packet)
                return True
            payload = b"\x03" + (b"KILL QUERY %d" if query_only else b"KILL %d") % target.upstream_thread
            self.records.append(Record(conn.user, "kill", f"KILL {kill_id} -> upstream {target.upstream_thread}"))
        elif isinstance(cmd, GatewayCommand):  # COM_RESET_CONNECTION: our own packet upstream
            payload = bytes((Com.RESET_CONNECTION,))
            statements.clear()
        else:
            payload = packet.payload
        text = cmd.describe()
        if isinstance(cmd, StmtExecute):
            text = statements.sql_for(cmd.statement_id) or f"<unknown statement {cmd.statement_id}>"
        record = Record(conn.user, cmd.name, text, tags=getattr(cmd, "tags", {}))
        up = conn.upstream
        up.sendall(frame(payload, 0))
        if cmd.response is ResponseKind.NONE:
            statements.record(cmd, None)
            return True
        scanner = ResponseScanner(cmd.response, capabilities=front.capabilities, seq=packet.next_seq)
        while not scanner.done:
            if scanner.wants_client_data:
                data = client.recv(1 << 16)
                if not data:
                    return False
                used = scanner.feed_client(data)
                if used < len(data):
                    raise ClientProtocolError("client sent data after its LOCAL INFILE")
                up.sendall(data)
                continue
            data = up.recv(1 << 18)
            if not data:
                raise ServerProtocolError("upstream closed")
            used = scanner.feed(data)
            if used < len(data):
                raise ServerProtocolError("upstream sent data after the response")
            client.sendall(data)
        statements.record(cmd, scanner)
        record.rows, record.affected = scanner.rows, scanner.affected_rows
        record.error = scanner.error.code if scanner.error else None
        self.records.append(record)
        return True
