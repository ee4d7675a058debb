"""A real JupyterHub (the `jupyterhub` package) on loopback, for the JUPYTERHUB_API_TOKEN tests.

Only its REST API is used, so it runs without configurable-http-proxy: routes to single-user
servers are kept in memory (``proxy_class`` below). Users come from ``allowed_users`` (the dummy
authenticator); an admin service's token mints users' API tokens over the hub's own REST API.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.api_server import free_port

CONFIG = '''
from jupyterhub.proxy import Proxy


class InMemoryProxy(Proxy):
    """The hub's REST API is all the tests need: no HTTP routing to single-user servers."""

    should_start = False
    _routes = {{}}

    async def add_route(self, routespec, target, data):
        self._routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self._routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self._routes)


c.JupyterHub.proxy_class = InMemoryProxy
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.pid_file = "{root}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.services = [{{"name": "sdm-test-admin", "api_token": "{admin_token}"}}]
c.JupyterHub.load_roles = [{{"name": "sdm-test-admin", "scopes": ["admin:users", "tokens"],
                            "services": ["sdm-test-admin"]}}]
'''


class Hub:
    def __init__(self, root: Path, users: set[str]):
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/hub/api"
        self.admin_token = secrets.token_hex(24)  # the admin service's: a service, not a user
        root.mkdir(parents=True, exist_ok=True)
        (root / "jupyterhub_config.py").write_text(CONFIG.format(
            hub_port=self.port, public_port=free_port(), root=root, users=set(users), admin_token=self.admin_token))
        self.proc: subprocess.Popen | None = None

    def start(self, limit: float = 60.0) -> "Hub":
        binary = shutil.which("jupyterhub", path=str(Path(sys.executable).parent))
        assert binary, "the jupyterhub package is a test dependency (pyproject.toml [test])"
        self.log = open(self.root / "hub.log", "ab")
        self.proc = subprocess.Popen([binary, "-f", str(self.root / "jupyterhub_config.py")], cwd=self.root,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + limit
        while True:
            assert self.proc.poll() is None, (self.root / "hub.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.api_url}/", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (self.root / "hub.log").read_text()[-3000:]
            time.sleep(0.2)

    def user_token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user``; by default with the scopes of a single-user server's own
        token (JupyterHub's "server" role: what a kernel finds in JUPYTERHUB_API_TOKEN)."""
        body = {"note": "sdm test", "scopes": scopes or ["users:activity!user", f"access:servers!server={user}/"]}
        response = httpx.post(f"{self.api_url}/users/{user}/tokens", json=body, timeout=10,
                              headers={"Authorization": f"token {self.admin_token}"})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
