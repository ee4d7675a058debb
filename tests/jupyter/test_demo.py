"""`sdm demo` end to end (the README's main command), the notebooks under nbval, and the leak test:
no database secret in the executed notebook, the kernel's environment, the servers' logs, the audit
log or any REST response."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter, pytest.mark.listener]

ROOT = Path(__file__).resolve().parents[2]
SDM = str(Path(sys.executable).parent / "sdm")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "PG", "JUPYTERHUB_"))}


@pytest.fixture(scope="module")
def demo_world():
    """The demo's world (sample shop, $SDM_HOME, gateway) with DB passwords the test knows."""
    from sdm_jupyter.demo import dataset
    from sdm_jupyter.demo.cli import Demo
    from sdm_jupyter.demo.gateway import GatewayUnavailable
    from sdm_jupyter.demo.postgres import PostgresUnavailable

    accounts = dataset.logins()
    secrets = [login.password for login in accounts.values()]
    try:
        with Demo(accounts=accounts) as demo:
            demo.secrets = secrets
            yield demo
    except (GatewayUnavailable, PostgresUnavailable) as exc:
        pytest.skip(f"demo world unavailable: {exc}")


def test_sdm_demo_execute_quickstart():
    """On this checkout: `sdm demo --execute notebooks/quickstart.ipynb` exits 0 and prints the
    notebook's audit events (user analyst, cell ids) and a passing verify."""
    out = subprocess.run([SDM, "demo", "--execute", "notebooks/quickstart.ipynb"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "audit events of notebooks/quickstart.ipynb" in out.stdout
    lines = [ln for ln in out.stdout.splitlines() if "cred=" in ln]
    assert lines and all("user=analyst" in ln for ln in lines)
    for cell in ("query", "params", "inject", "connect", "current-user", "write"):
        assert f"cell={cell} " in out.stdout, cell
    assert "audit log OK" in out.stdout


def test_notebooks_run_under_nbval(demo_world):
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert {"notebooks/quickstart.ipynb", "notebooks/admin.ipynb"} <= set(notebooks)
    out = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                          *notebooks], cwd=ROOT, env=demo_world.kernel_env(), capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", out.stdout) and " failed" not in out.stdout


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def test_leak_nothing_secret_anywhere(demo_world, kernel_factory, tmp_path):
    from sdm_jupyter.demo.execute import execute_notebook

    demo, secrets = demo_world, demo_world.secrets
    haystacks: dict[str, str] = {}

    # 1. The quickstart notebook, executed and saved.
    saved = tmp_path / "quickstart.executed.ipynb"
    execute_notebook(ROOT / "notebooks" / "quickstart.ipynb", env=demo.kernel_env(),
                     session_name="notebooks/quickstart.ipynb", output=saved)
    haystacks["saved notebook"] = saved.read_text()

    # 2. A kernel's whole environment, after it has queried through the gateway.
    k = kernel_factory(demo.kernel_env())
    k.ok("%load_ext sdm_jupyter\n%sdm sql prod-db SELECT count(*) FROM orders")
    haystacks["kernel environment"] = k.ok("import os, json\nprint(json.dumps(dict(os.environ)))").stdout

    # 3. A Jupyter server with the extension: its REST answers and its log.
    port, token = free_port(), "leaktesttoken"
    log_path = tmp_path / "jupyter-server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
             "--ServerApp.jpserver_extensions=sdm_jupyter=True", "--debug"],
            env=demo.kernel_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_http(f"{base}/api/status?token={token}")
            for route in ("whoami", "datasources", "activity?n=500"):
                r = httpx.get(f"{base}/sdm/api/{route}", headers={"Authorization": f"token {token}"}, timeout=30)
                assert r.status_code == 200, (route, r.text)
                haystacks[f"/sdm/api/{route}"] = r.text
        finally:
            server.terminate()
            server.wait(timeout=30)
    haystacks["jupyter server log"] = log_path.read_text(errors="replace")

    # 4. The gateway: its REST answers (user and admin), its log and the audit log it keeps.
    with demo.admin_client() as admin:
        haystacks["GET /v1/admin/audit"] = json.dumps(admin.get("/v1/admin/audit", n=10000))
        haystacks["GET /v1/admin/credentials"] = json.dumps(admin.get("/v1/admin/credentials"))
    for path in (demo.root / "gateway.log", demo.world.home / "audit.jsonl"):
        if path.exists():
            haystacks[str(path.name)] = path.read_text(errors="replace")

    assert "shop_readonly" in haystacks["saved notebook"]  # the haystacks are the real ones
    assert len(haystacks["GET /v1/admin/audit"]) > 1000
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a database secret leaked into the {where}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_sdm_demo_interactive_serves_lab_and_stops_on_ctrl_c(tmp_path, stop):
    """Ctrl-C, and a closed terminal (review: after SIGHUP the gateway, PostgreSQL and JupyterLab
    went on running with the demo's keys on disk), stop everything and remove the directory."""
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SDM, "demo", "--no-browser"], cwd=tmp_path, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            url = None
            while url is None:
                assert proc.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                m = re.search(r"(http://127\.0\.0\.1:(\d+)/lab[^\s]*\?token=(\w+))",
                              log_path.read_text(errors="replace"))
                if m:
                    url, lab_port, token = m.group(1), int(m.group(2)), m.group(3)
                time.sleep(0.2)
            text = log_path.read_text(errors="replace")
            pg_port = int(re.search(r"on 127\.0\.0\.1:(\d+), database shop", text).group(1))
            gw_port = int(re.search(r"API http://127\.0\.0\.1:(\d+)", text).group(1))
            workdir = Path(re.search(r"working directory (\S+)", text).group(1))
            r = httpx.get(f"http://127.0.0.1:{lab_port}/sdm/api/whoami",
                          headers={"Authorization": f"token {token}"}, timeout=30)
            assert r.status_code == 200 and r.json()["user"] == "analyst"
            assert httpx.get(url, timeout=30).status_code == 200  # JupyterLab itself
        finally:
            proc.send_signal(stop)
            code = proc.wait(timeout=120)
    assert code in (0, 130), log_path.read_text(errors="replace")
    assert not any(_listening(p) for p in (lab_port, pg_port, gw_port))
    assert not workdir.exists()
