"""Run the gateway for the demo: ``sdm gateway --api … --postgres …`` as its own process.

While a checkout's ``sdm gateway`` cannot serve ``--postgres`` yet, the same pieces (control API and
the PostgreSQL listener from ``sdm_proxy.wire.postgres``) are run in a thread of this process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .postgres import free_port


class GatewayUnavailable(RuntimeError):
    pass


def sdm_command() -> list[str]:
    exe = Path(sys.executable).parent / "sdm"
    if exe.exists():
        return [str(exe)]
    return [shutil.which("sdm")] if shutil.which("sdm") else [sys.executable, "-m", "sdm_proxy.cli.main"]


def _wait(url: str, pg_port: int, alive, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        with contextlib.suppress(httpx.HTTPError, OSError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                with socket.create_connection(("127.0.0.1", pg_port), timeout=1):
                    return True
        time.sleep(0.1)
    return False


class GatewayProcess:
    """``sdm gateway`` in a subprocess; its output goes to ``log_path``."""

    def __init__(self, home: Path, log_path: Path):
        self.home, self.log_path = home, log_path
        self.api_port, self.pg_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.postgres = f"127.0.0.1:{self.pg_port}"
        self.proc: subprocess.Popen | None = None
        self.mode = "process"

    def start(self) -> "GatewayProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "PG"))}
        env["SDM_HOME"] = str(self.home)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*sdm_command(), "gateway", "--api", f"127.0.0.1:{self.api_port}", "--postgres", self.postgres,
             "--mysql", "off"],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)  # Ctrl-C in the terminal reaches the demo, which stops us in order
        if not _wait(self.url, self.pg_port, lambda: self.proc.poll() is None):
            output = self.log_path.read_text(errors="replace")
            self.stop()
            raise GatewayUnavailable(output.strip().splitlines()[-1] if output.strip() else "no output")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()


class InProcessGateway:
    """The control API and the PostgreSQL listener in a background thread's event loop."""

    def __init__(self, home: Path):
        self.home = home
        self.api_port, self.pg_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.postgres = f"127.0.0.1:{self.pg_port}"
        self.mode = "in-process"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sdm-gateway", daemon=True)
        self._server = None
        self._listener = None
        self._cp = None

    def start(self) -> "InProcessGateway":
        import uvicorn
        from functools import partial

        from sdm_proxy.api.app import create_app
        from sdm_proxy.control.context import ControlPlane
        from sdm_proxy.control.unlock import unlock
        from sdm_proxy.gateway import enrol_local_proxy
        from sdm_proxy.home import SdmHome
        from sdm_proxy.unlock.client import InProcessUnlockClient
        from sdm_proxy.wire.postgres.server import start_postgres_listener

        self._cp = cp = ControlPlane.open(SdmHome(self.home))
        identity = enrol_local_proxy(cp)
        self._thread.start()
        self._listener = asyncio.run_coroutine_threadsafe(start_postgres_listener(
            "127.0.0.1", self.pg_port, unlock_client=InProcessUnlockClient(identity, partial(unlock, cp)),
            audit_log=cp.audit), self._loop).result(30)
        self._server = uvicorn.Server(uvicorn.Config(create_app(cp), host="127.0.0.1", port=self.api_port,
                                                     log_level="warning", access_log=False, lifespan="off"))
        self._server.install_signal_handlers = lambda: None  # the demo owns Ctrl-C
        asyncio.run_coroutine_threadsafe(self._server.serve(), self._loop)
        if not _wait(self.url, self.pg_port, self._thread.is_alive):
            self.stop()
            raise GatewayUnavailable("the in-process gateway did not come up")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._listener is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._listener.close(), self._loop).result(20)
        time.sleep(0.3)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._cp is not None:
            self._cp.close()
            self._cp = None


def start_gateway(home: Path, log_path: Path):
    """The real ``sdm gateway`` process; the in-process fallback if it has no ``--postgres`` yet."""
    try:
        return GatewayProcess(home, log_path).start()
    except GatewayUnavailable as exc:
        if "no wire listeners" not in str(exc) and "no such option" not in str(exc):
            raise
    try:
        import sdm_proxy.wire.postgres.server  # noqa: F401
    except ImportError:
        raise GatewayUnavailable("this sdm-proxy has no PostgreSQL listener yet") from None
    return InProcessGateway(home).start()
