"""What the REST handlers call: the gateway, as the Jupyter user, off the event loop."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from ..gateway_client import GatewayClient, GatewayConfig


class SdmService:
    """One gateway client for the server's user (single-user server: the person; under JupyterHub,
    ``JUPYTERHUB_API_TOKEN`` names the hub user)."""

    def __init__(self, gateway_url: str | None, *, session_ttl: str = "1h"):
        self.gateway_url = gateway_url
        self.session_ttl = session_ttl
        self._client: GatewayClient | None = None

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            self._client = GatewayClient(GatewayConfig.discover(url=self.gateway_url), ttl=self.session_ttl)
        return self._client

    async def call(self, method: str, *args: Any) -> Any:
        # httpx.Client is blocking: keep it off the server's event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, partial(self._call, method, *args))

    def _call(self, method: str, *args: Any) -> Any:
        return getattr(self, f"_{method}")(*args)

    def _whoami(self) -> dict:
        client = self.client
        me = client.whoami()
        host, port = client.postgres_address()
        return {"user": me.get("user"), "admin": bool(me.get("admin")), "session_id": me.get("session_id"),
                "gateway": client.url, "postgres_listener": f"{host}:{port}"}

    def _datasources(self) -> list[dict]:
        return self.client.datasources()

    def _activity(self, n: int) -> list[dict]:
        return self.client.activity(n)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
