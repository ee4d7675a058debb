"""`sdm gateway` as a real process: the control API and the PostgreSQL listener together, `sdm
connect` handing a working URL to psycopg and psql, and a clean, audited stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import psycopg
import pytest

from tests.support.api_server import free_port
from tests.support.cli import ok, sdm, start_gateway
from tests.support.procs import children, exited

pytestmark = pytest.mark.postgres


@pytest.fixture
def running_gateway(pg_cluster, tmp_path, request):
    chainer = getattr(request, "param", "thread")  # --audit-chainer
    home = tmp_path / "home"
    ok(home, "init")
    ok(home, "datasource", "add", "pg", "--type", "postgres", "--host", pg_cluster.host,
       "--port", str(pg_cluster.port), "--database", pg_cluster.database)
    for name, key in (("read-only", "read-only"), ("superuser", "superuser")):
        login = pg_cluster.logins[key]
        ok(home, "credential", "add", "pg", name, "--username", login.username, "--password-stdin",
           stdin=login.password)
    ok(home, "role", "create", "analysts")
    ok(home, "role", "lease", "analysts", "pg", "read-only")
    ok(home, "user", "add", "ann")
    ok(home, "role", "assign", "analysts", "ann")
    ann_key = ok(home, "user", "key", "ann").stdout.strip()
    api, pg = free_port(), free_port()
    proc = start_gateway(home, "--api", f"127.0.0.1:{api}", "--postgres", f"127.0.0.1:{pg}", "--mysql", "off",
                         "--audit-chainer", chainer)
    yield home, ann_key, api, pg, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_connect_url_works_with_psycopg_and_psql(running_gateway, pg_cluster):
    home, ann_key, api, pg, proc = running_gateway
    info = json.loads((home / "gateway.json").read_text())
    assert info["postgres"] == f"127.0.0.1:{pg}"
    listeners = httpx.get(f"http://127.0.0.1:{api}/v1/gateway",
                          headers={"Authorization": f"Bearer {ann_key}"}).json()["listeners"]
    assert listeners["postgres"] == f"127.0.0.1:{pg}"
    url = ok(home, "connect", "pg", api_key=ann_key).stdout.strip()
    assert url.startswith("postgresql://read-only:sdms.") and pg_cluster.logins["read-only"].password not in url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
    env_lines = ok(home, "connect", "pg", "--format", "env", api_key=ann_key).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in env_lines.splitlines())
    psql = subprocess.run(["psql", "-XAtc", "SELECT count(*) FROM orders"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert psql.returncode == 0 and int(psql.stdout.strip()) > 0, psql.stderr


def test_connect_refuses_credentials_the_caller_lacks(running_gateway):
    home, ann_key, *_ = running_gateway
    res = sdm(home, "connect", "pg", "--as", "superuser", api_key=ann_key)
    assert res.rc == 1 and "you hold no credential 'superuser' on pg" in res.stderr


@pytest.mark.parametrize("running_gateway", ["thread", "process"], indirect=True)
def test_sigterm_stops_cleanly_and_signs_a_checkpoint(running_gateway, request):
    home, ann_key, api, pg, proc = running_gateway
    url = ok(home, "connect", "pg", api_key=ann_key).stdout.strip()
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
    chainers = children(proc.pid)  # `sdm` runs the gateway in its own process
    forks = 1 if request.node.callspec.params["running_gateway"] == "process" else 0
    assert len(chainers) == forks, "--audit-chainer process forks one audit chainer, thread none"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert all(exited(pid) for pid in chainers), "the audit chainer outlived the gateway"
    assert b"Traceback" not in err, err
    assert not (home / "gateway.json").exists()
    verify = ok(home, "audit", "verify").stdout
    assert "OK" in verify and " 0 signed checkpoints" not in verify, verify


def _start_gateway(home, api, pg):
    return start_gateway(home, "--api", f"127.0.0.1:{api}", "--postgres", f"127.0.0.1:{pg}", "--mysql", "off")


@pytest.mark.parametrize("running_gateway", ["thread", "process"], indirect=True)
def test_kill_9_loses_no_audit_event_of_a_statement_that_ran(running_gateway, request):
    """Statements wait only for the spool write; a gateway killed before its next batch commit still
    leaves every event on disk, and the next start chains them (DESIGN §2.4, nothing lost)."""
    home, ann_key, api, pg, proc = running_gateway
    url = ok(home, "connect", "pg", api_key=ann_key).stdout.strip()
    ran = []
    conns = [psycopg.connect(url, autocommit=True) for _ in range(4)]
    for n in range(400):
        conn = conns[n % 4]
        assert conn.execute(f"SELECT 'mark-{n}'").fetchone()[0] == f"mark-{n}"
        ran.append(f"mark-{n}")
    chainers = children(proc.pid)  # `sdm` runs the gateway in its own process
    assert len(chainers) == (1 if request.node.callspec.params["running_gateway"] == "process" else 0)
    proc.kill()  # SIGKILL right after the last result: no drain, no closing commit
    proc.wait()
    assert all(exited(pid) for pid in chainers), "the audit chainer must die with the gateway (PDEATHSIG)"
    for conn in conns:
        conn.close()
    spooled = list((home / "audit-spool").glob("*.spool"))
    # The killed gateway left gateway.json behind: `sdm connect` says so instead of printing a
    # URL that leads nowhere.
    stale = sdm(home, "connect", "pg", api_key=ann_key)
    assert stale.rc == 1 and stale.stdout == "" and "left from one that stopped" in stale.stderr, stale.describe()
    (home / "gateway.json").unlink(missing_ok=True)

    restarted = _start_gateway(home, api, pg)
    restarted.send_signal(signal.SIGTERM)
    _, err = restarted.communicate(timeout=60)
    assert b"Traceback" not in err, err
    events = ok(home, "audit", "tail", "--json", "-n", "100000").json_lines()
    recorded = [e["query"] for e in events if e["type"] == "query" and "mark-" in (e["query"] or "")]
    marks = sorted({q.split("'")[1] for q in recorded})
    assert marks == sorted(ran), f"{len(set(ran) - set(marks))} statements ran without an audit event"
    assert len(recorded) == len(ran), "no event was chained twice"
    assert spooled, "the killed gateway left its spool behind (else this test proves nothing)"
    assert list((home / "audit-spool").glob("*.spool")) == []
    verify = ok(home, "audit", "verify").stdout
    assert "OK" in verify, verify
