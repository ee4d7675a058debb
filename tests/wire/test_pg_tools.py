"""The stock PostgreSQL tools through the gateway (subprocesses; PGPASSWORD = the session token)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.wire.stack import DATASOURCE

pytestmark = pytest.mark.postgres


def _env(gateway, user: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = gateway.tokens[user]
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _conninfo(gateway, credential: str) -> str:
    return f"host={gateway.host} port={gateway.port} dbname={DATASOURCE} user={credential}"


def _tool(gateway, name: str) -> str:
    path = Path(gateway.pg.bindir) / name
    return str(path) if path.exists() else name


def test_psql_runs_a_script(gateway, tmp_path):
    script = tmp_path / "script.sql"
    out_file = tmp_path / "orders.csv"
    script.write_text(
        "\\set ON_ERROR_STOP 1\n"
        "SELECT current_user;\n"
        "SELECT count(*) AS n FROM orders \\gset\n"
        "\\echo orders=:n\n"
        f"\\copy (SELECT id, amount FROM orders ORDER BY id LIMIT 10) TO '{out_file}' CSV\n"
        "SELECT $$psql-through-gateway$$ AS marker;\n")
    out = subprocess.run([_tool(gateway, "psql"), _conninfo(gateway, "read-only"), "-X", "-At", "-f", str(script)],
                         env=_env(gateway, "ann"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == gateway.pg.logins["read-only"].username
    assert "orders=600" in lines and lines[-1] == "psql-through-gateway"
    assert len(out_file.read_text().splitlines()) == 10
    assert gateway.query_events("psql-through-gateway")


def test_psql_reports_the_gateways_refusal(gateway):
    env = _env(gateway, "ann")
    env["PGPASSWORD"] = "sdms.wrong"
    out = subprocess.run([_tool(gateway, "psql"), _conninfo(gateway, "read-only"), "-X", "-c", "SELECT 1"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "password authentication failed" in out.stderr


def test_psql_interrupt_cancels_the_running_query_within_2s(gateway):
    """Ctrl-C in psql is libpq's PQcancel: the gateway maps its key to the upstream backend."""
    proc = subprocess.Popen([_tool(gateway, "psql"), _conninfo(gateway, "read-only"), "-X", "-c",
                             "SELECT pg_sleep(30) /* psql-sigint */"],
                            env=_env(gateway, "ann"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gateway.wait_for(lambda: gateway.query_events("psql-sigint"), what="the query to start")
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert "canceling statement due to user request" in err
    assert elapsed < 2.0, f"cancel took {elapsed:.2f}s"


def test_pgbench_initialise_and_select_only(gateway):
    env = _env(gateway, "bob")
    init = subprocess.run([_tool(gateway, "pgbench"), "-i", "-s", "1", "-q", _conninfo(gateway, "superuser")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    for mode in ("simple", "extended", "prepared"):
        run = subprocess.run([_tool(gateway, "pgbench"), "-S", "-n", "-M", mode, "-c", "4", "-j", "2", "-t", "200",
                              _conninfo(gateway, "superuser")],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", run.stdout)
        assert processed and processed.group(1) == processed.group(2) == "800", run.stdout
        assert "number of failed transactions: 0" in run.stdout
