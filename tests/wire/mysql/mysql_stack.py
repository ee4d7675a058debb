"""A real gateway stack for the MySQL listener tests: $SDM_HOME, control plane, enrolled proxy, listener.

The listener runs in its own event loop on a background thread, as in ``sdm gateway``; tests talk to
it over real sockets with real clients (PyMySQL, SQLAlchemy, pandas, the mariadb CLI), and it logs in
to the password-enforcing ``mysql_server``. Nothing is mocked.

Users:
- ``ann``: role ``analysts`` leases ``read-only`` only (her one lease is picked when ``user`` names
  no credential);
- ``bob``: role ``dba`` leases ``superuser`` and ``restricted`` (must name one);
- ``carl``: no lease at all.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pymysql
from sdm_proxy.control import catalog, sessions
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.wire.mysql.errors import ServerProtocolError
from sdm_proxy.wire.mysql.packets import MAX_SERVER_CONTROL_PACKET, PacketReader

from tests.support.gateway_state import GatewayState

DATASOURCE = "mydb"
CREDENTIAL_KEYS = ("superuser", "read-only", "restricted")


@dataclass
class MysqlGateway:
    state: GatewayState
    db: Any  # the mysql_server fixture
    loop: Any  # tests.wire.stack.LoopThread
    listener: Any
    host: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    actors: dict[str, Any] = field(default_factory=dict)

    @property
    def cp(self):
        return self.state.cp

    def kwargs(self, user: str = "ann", credential: str = "read-only", *, token: str | None = None,
               database: str = DATASOURCE, **extra) -> dict:
        """pymysql.connect keyword arguments through the gateway."""
        kw = {"host": self.host, "port": self.port, "database": database, "user": credential,
              "password": self.tokens[user] if token is None else token, "connect_timeout": 10}
        kw.update(extra)
        return kw

    def connect(self, user: str = "ann", credential: str = "read-only", **kw) -> pymysql.Connection:
        return pymysql.connect(**self.kwargs(user, credential, **kw))

    def url(self, user: str = "ann", credential: str = "read-only", *, token: str | None = None) -> str:
        from urllib.parse import quote
        tok = self.tokens[user] if token is None else token
        return f"mysql+pymysql://{quote(credential, safe='')}:{quote(tok, safe='')}@{self.host}:{self.port}/{DATASOURCE}"

    def new_token(self, user: str, ttl: timedelta = timedelta(hours=1)) -> dict:
        return sessions.create_session(self.cp, self.actors[user], ttl)

    def events(self, *types: str, n: int = 100_000) -> list[dict]:
        return [e.to_dict() for e in self.cp.audit.tail(n, types=list(types) or None)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def query_events(self, needle: str) -> list[dict]:
        return [e for e in self.events("query") if e["query"] and needle in e["query"] and e["protocol"] == "mysql"]

    def outcome(self, query_event: dict, timeout: float = 10.0) -> dict:
        """The query.end event that belongs to a query event."""
        def find():
            for e in self.events("query.end", n=5000):
                if (e.get("details") or {}).get("query_event_id") == query_event["id"]:
                    return e
            return None
        return self.wait_for(find, timeout, what=f"query.end of {query_event['query'][:60]!r}")

    def direct(self, key: str = "superuser", **kw) -> pymysql.Connection:
        """A direct connection to the database (not through the gateway), for checks."""
        return pymysql.connect(**(self.db.connect_kwargs(key) | {"autocommit": True} | kw))

    def sessions_live(self) -> int:
        return len(self.listener.sessions)


def build_state(root, db) -> tuple[GatewayState, dict, dict]:
    state = GatewayState.create(root)
    catalog.add_datasource(state.cp, state.admin, DATASOURCE, type="mysql", host="127.0.0.1",
                           port=db.port, database=db.database)
    for key in CREDENTIAL_KEYS:
        login = db.logins[key]
        catalog.add_credential(state.cp, state.admin, DATASOURCE, key, username=login.username,
                               secret=SecretValue(login.password.encode()))
    state.role_leasing("analysts", DATASOURCE, "read-only")
    state.role_leasing("dba", DATASOURCE, "superuser", "restricted")
    actors = {"ann": state.add_user("ann", roles_=("analysts",)),
              "bob": state.add_user("bob", roles_=("dba",)),
              "carl": state.add_user("carl")}
    tokens = {name: state.session_token(actor) for name, actor in actors.items()}
    return state, actors, tokens


# ---- raw sockets ---------------------------------------------------------------------------------


def read_packets(sock: socket.socket, *, timeout: float = 15.0) -> list[tuple[int, bytes]]:
    """Everything the gateway sends until it closes: [(sequence id, payload)]. Asserts whole frames."""
    sock.settimeout(timeout)
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        raw += chunk
    reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=None)
    reader.feed(raw)
    out = []
    while (packet := reader.next_packet()) is not None:
        out.append((packet.seq, packet.payload))
    assert not reader.in_packet, f"half a packet at the end: {raw[-40:]!r}"
    return out
