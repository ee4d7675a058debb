"""The pieces of a real gateway stack for the wire tests: $SDM_HOME, control plane, enrolled proxy, listener.

The listener runs in its own event loop on a background thread, exactly as in ``sdm gateway``;
tests talk to it over real sockets with real clients (psycopg, psql, pgbench), and it talks to the
password-enforcing ``pg_cluster``. Nothing is mocked.

Users:
- ``ann``: role ``analysts`` leases ``read-only`` only (her one lease is picked when ``user`` names
  no credential);
- ``bob``: role ``dba`` leases ``superuser``, ``restricted`` and ``md5`` (must name one);
- ``carl``: no lease at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sdm_proxy.control import catalog, sessions
from sdm_proxy.control.live_access import live_access_reason
from sdm_proxy.vault.secret import SecretValue

from tests.support.gateway_state import GatewayState

DATASOURCE = "pgtest"
CREDENTIAL_KEYS = ("superuser", "read-only", "restricted", "md5")

# Run in a child process: psycopg's cancel() (libpq PQcancel) blocks holding the GIL, which would
# freeze an in-process gateway; a notebook kernel is a separate process anyway.
CANCEL_SCRIPT = """
import json, sys, threading, time, psycopg
kw = json.loads(sys.argv[1])
with psycopg.connect(**kw) as conn:
    fired = {}
    def cancel():
        fired["at"] = time.monotonic()
        getattr(conn, sys.argv[2])()
    timer = threading.Timer(0.5, cancel)
    timer.start()
    try:
        conn.execute("SELECT pg_sleep(30) /* cancel-test-" + sys.argv[2] + " */")
        outcome = "not cancelled"
    except psycopg.errors.QueryCanceled:
        outcome = "cancelled"
    elapsed = time.monotonic() - fired["at"]
    timer.join()
    conn.rollback()
    alive = conn.execute("SELECT 1").fetchone() == (1,)
print(json.dumps({"outcome": outcome, "elapsed": elapsed, "alive": alive}))
"""



class LoopThread:
    """An asyncio loop on a daemon thread; ``run(coro)`` executes a coroutine there and waits."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wire-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Gateway:
    state: GatewayState
    pg: Any
    loop: LoopThread
    listener: Any
    host: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    actors: dict[str, Any] = field(default_factory=dict)
    log_records: list[str] = field(default_factory=list)

    @property
    def cp(self):
        return self.state.cp

    def kwargs(self, user: str = "ann", credential: str = "read-only", *, token: str | None = None, **extra):
        """psycopg.connect keyword arguments through the gateway."""
        kw = {"host": self.host, "port": self.port, "dbname": DATASOURCE, "user": credential,
              "password": self.tokens[user] if token is None else token, "sslmode": "disable",
              "connect_timeout": 10}
        kw.update(extra)
        return kw

    def new_token(self, user: str, ttl: timedelta = timedelta(hours=1)) -> dict:
        return sessions.create_session(self.cp, self.actors[user], ttl)

    def events(self, *types: str, n: int = 100_000) -> list[dict]:
        return [e.to_dict() for e in self.cp.audit.tail(n, types=list(types) or None)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"):
        """Poll until predicate() is truthy (audit outcomes are written just after the fact)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def query_events(self, needle: str) -> list[dict]:
        return [e for e in self.events("query") if e["query"] and needle in e["query"]]

    def outcome(self, query_event: dict, timeout: float = 10.0) -> dict:
        """The query.end event that belongs to a query event."""
        def find():
            for e in self.events("query.end", n=2000):
                if (e.get("details") or {}).get("query_event_id") == query_event["id"]:
                    return e
            return None
        return self.wait_for(find, timeout, what=f"query.end of {query_event['query'][:60]!r}")


def build_state(root, pg) -> tuple[GatewayState, dict, dict]:
    state = GatewayState.create(root)
    catalog.add_datasource(state.cp, state.admin, DATASOURCE, type="postgres", host="127.0.0.1",
                           port=pg.port, database=pg.database)
    for key in CREDENTIAL_KEYS:
        login = pg.logins[key]
        catalog.add_credential(state.cp, state.admin, DATASOURCE, key, username=login.username,
                               secret=SecretValue(login.password.encode()))
    state.role_leasing("analysts", DATASOURCE, "read-only")
    state.role_leasing("dba", DATASOURCE, "superuser", "restricted", "md5")
    actors = {"ann": state.add_user("ann", roles_=("analysts",)),
              "bob": state.add_user("bob", roles_=("dba",)),
              "carl": state.add_user("carl")}
    tokens = {name: state.session_token(actor) for name, actor in actors.items()}
    return state, actors, tokens


def make_policy_check(cp):
    async def policy_check(cred):
        return await asyncio.to_thread(live_access_reason, cp, session_id=cred.session_id, user=cred.user,
                                       datasource=cred.datasource.name, credential=cred.credential)
    return policy_check
