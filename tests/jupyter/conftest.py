"""Fixtures for the notebook side: a real gateway state and control API, the real `sdm gateway`
(with its PostgreSQL listener) as a subprocess, and real IPython kernels (jupyter_client).

The gateway side is set up through sdm_proxy here (tests may); the code under test (sdm_jupyter)
reaches it over HTTP and the PostgreSQL wire protocol only.
"""

from __future__ import annotations

import os
import queue
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.api_server import ApiServer
from tests.support.gateway_state import GatewayState

ROOT = Path(__file__).resolve().parents[2]
LISTENER_MISSING = "needs the gateway's PostgreSQL listener (issue 3), which this checkout does not have yet"


@dataclass
class Gateway:
    """The test world: state, users and their API keys, the DB cluster behind datasource `prod`."""

    state: GatewayState
    keys: dict[str, str]
    db: object  # tests.support.accounts.DatabaseServer
    api_url: str | None = None
    postgres: str | None = None  # HOST:PORT of the listener, when running
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def events(self, type_: str | None = None) -> list[dict]:
        return self.state.events(type_)

    def query_events(self, marker: str, expect: int = 1, limit: float = 15.0) -> list[dict]:
        """`query` audit events whose statement contains ``marker``, once ``expect`` of them are
        chained (the gateway chains spooled statement events in batches, a few ms after they run)."""
        deadline = time.monotonic() + limit
        while True:
            found = [e for e in self.events("query") if marker in (e.get("query") or "")]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def kernel_env(self, user: str = "analyst", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SDM_", "JUPYTERHUB_", "PG"))}
        env.update(SDM_GATEWAY_URL=self.api_url or "", SDM_API_KEY=self.keys[user],
                   SDM_HOME=str(self.state.home.root.parent / "no-home"))
        if self.postgres:
            env["SDM_GATEWAY_POSTGRES"] = self.postgres
        env.update(extra)
        return env


def make_state(root: Path, db) -> Gateway:
    from sdm_proxy.control import roles, users

    state = GatewayState.create(root)
    creds = {k: (db.logins[k].username, db.logins[k].password) for k in ("superuser", "read-only", "restricted")}
    state.add_datasource("prod", port=db.port, database=db.database, credentials=creds)
    state.role_leasing("analysts", "prod", "read-only")
    state.role_leasing("auditors", "prod", "restricted")
    keys = {"admin": state.home.admin_key_path.read_text().strip()}
    for name, role in (("analyst", "analysts"), ("nobody", None)):
        users.add_user(state.cp, state.admin, name)
        if role:
            roles.assign_role(state.cp, state.admin, role, name)
        keys[name] = users.create_api_key(state.cp, state.admin, name)
    return Gateway(state, keys, db)


@pytest.fixture(scope="session")
def gw_api(pg_cluster, tmp_path_factory) -> Gateway:
    """State + the real control API (uvicorn in a thread); no PostgreSQL listener."""
    gw = make_state(tmp_path_factory.mktemp("sdm") / "home", pg_cluster)
    with ApiServer(gw.state.cp) as api:
        gw.api_url = api.url
        yield gw
    gw.state.close()


@pytest.fixture(scope="session")
def gw(pg_cluster, tmp_path_factory) -> Gateway:
    """State + the gateway with its control API and PostgreSQL listener: the real `sdm gateway`
    process, or (while this checkout's CLI has no --postgres yet) the same API and listener in-process."""
    from sdm_jupyter.demo.gateway import GatewayUnavailable, start_gateway

    base = tmp_path_factory.mktemp("sdm-gw")
    gw = make_state(base / "home", pg_cluster)
    gw.log_path = base / "gateway.log"
    try:
        handle = start_gateway(gw.state.home.root, gw.log_path)
    except GatewayUnavailable as exc:
        pytest.skip(f"{LISTENER_MISSING} ({exc})")
    gw.api_url, gw.postgres, gw.extra["mode"] = handle.url, handle.postgres, handle.mode
    try:
        yield gw
    finally:
        handle.stop()
        gw.state.close()


# ---- real kernels --------------------------------------------------------------------------------


@dataclass
class CellResult:
    stdout: str = ""
    stderr: str = ""
    result: str | None = None  # text/plain of execute_result
    displays: list[dict] = field(default_factory=list)
    error: dict | None = None  # {"ename","evalue","traceback"}
    status: str | None = None
    reply: dict = field(default_factory=dict)  # execute_reply content (ename/evalue on errors)

    @property
    def error_line(self) -> str:
        assert self.error is not None, "the cell did not fail"
        return f"{self.error['ename']}: {self.error['evalue']}"


class Kernel:
    """A real IPython kernel driven over ZMQ, sending JupyterLab-style ``cellId`` metadata."""

    def __init__(self, env: dict[str, str], cwd: str | None = None):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def kernel_id(self) -> str:
        return Path(self.km.connection_file).name.removeprefix("kernel-").removesuffix(".json")

    def send(self, code: str, cell_id: str | None = None) -> str:
        content = dict(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                       stop_on_error=True)
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def collect(self, msg_id: str, timeout: float = 120) -> CellResult:
        out = CellResult()
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no reply to the cell within {timeout}s") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                setattr(out, content["name"], getattr(out, content["name"]) + content["text"])
            elif kind == "execute_result":
                out.result = content["data"].get("text/plain")
            elif kind in ("display_data", "update_display_data"):
                out.displays.append(content)
            elif kind == "error":
                out.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=30)
        out.status = reply["content"]["status"]
        out.reply = reply["content"]
        return out

    def run(self, code: str, cell_id: str | None = None, timeout: float = 120) -> CellResult:
        return self.collect(self.send(code, cell_id), timeout)

    def ok(self, code: str, cell_id: str | None = None) -> CellResult:
        result = self.run(code, cell_id)
        assert result.status == "ok", f"cell failed: {result.reply.get('ename')}: {result.reply.get('evalue')}"
        return result

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel_factory():
    kernels: list[Kernel] = []

    def make(env: dict[str, str], cwd: str | None = None) -> Kernel:
        k = Kernel(env, cwd)
        kernels.append(k)
        return k

    yield make
    for k in kernels:
        k.close()
