"""The same listener on uvloop (the gateway uses it when installed): login, TLS, relay, cancel."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import psycopg
import pytest
from sdm_proxy.control.unlock import unlock
from sdm_proxy.gateway import enrol_local_proxy
from sdm_proxy.unlock.client import InProcessUnlockClient
from sdm_proxy.wire.postgres import gateway_tls_context, start_postgres_listener

from tests.wire.stack import CANCEL_SCRIPT, make_policy_check

pytestmark = pytest.mark.postgres
uvloop = pytest.importorskip("uvloop")


@pytest.fixture(scope="module")
def uv_port(gateway):
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = InProcessUnlockClient(enrol_local_proxy(gateway.cp), lambda body: unlock(gateway.cp, body))

    async def start():
        return await start_postgres_listener(
            "127.0.0.1", 0, unlock_client=client, audit_log=gateway.cp.audit,
            tls_context=gateway_tls_context(gateway.state.home.tls_dir),
            policy_check=make_policy_check(gateway.cp))

    listener = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield listener.port
    asyncio.run_coroutine_threadsafe(listener.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_uvloop_listener(gateway, uv_port, sslmode):
    with psycopg.connect(**gateway.kwargs("ann", port=uv_port, sslmode=sslmode)) as conn:
        assert conn.pgconn.ssl_in_use is (sslmode == "require")
        assert conn.execute("SELECT current_user").fetchone()[0] == gateway.pg.logins["read-only"].username
        cur = conn.execute("SELECT g FROM generate_series(1, 100000) g")
        assert sum(r[0] for r in cur) == 100000 * 100001 // 2
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(10)]
        assert [c.fetchone()[0] for c in curs] == list(range(10))


def test_uvloop_cancel(gateway, uv_port):
    out = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT, json.dumps(gateway.kwargs("ann", port=uv_port)),
                          "cancel"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "cancelled" and result["elapsed"] < 2.0
