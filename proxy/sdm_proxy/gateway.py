"""Runs the control API (and, as they land, the wire listeners) in one asyncio event loop.

At start the gateway enrols its own proxy key (``$SDM_HOME/keys/proxy.pem``) so its listeners can
ask for unlocks; SIGTERM/SIGINT stop accepting and let running requests finish.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import uvicorn

from .api.app import create_app
from .control.context import Actor, ControlPlane
from .control.proxies import enroll_proxy
from .unlock.client import ProxyIdentity

log = logging.getLogger("sdm.gateway")

DEFAULT_API = ("127.0.0.1", 8471)


@dataclass(frozen=True)
class GatewayConfig:
    api_host: str = DEFAULT_API[0]
    api_port: int = DEFAULT_API[1]


def enrol_local_proxy(cp: ControlPlane) -> ProxyIdentity:
    """The gateway process holds $SDM_HOME, which is admin-level trust: it enrols its own key."""
    identity = ProxyIdentity.load_or_create(cp.home.proxy_key_path)
    system = Actor(user_id=0, name="sdm-gateway", is_admin=True)
    enroll_proxy(cp, system, identity.public_key_bytes)
    return identity


async def serve(cp: ControlPlane, config: GatewayConfig, identity: ProxyIdentity) -> None:
    log.info("proxy %s enrolled", identity.proxy_id)
    server = uvicorn.Server(uvicorn.Config(
        create_app(cp), host=config.api_host, port=config.api_port, log_level="warning",
        access_log=False, lifespan="off"))
    log.info("control API on http://%s:%d", config.api_host, config.api_port)
    await server.serve()


def run(cp: ControlPlane, config: GatewayConfig, identity: ProxyIdentity) -> None:
    asyncio.run(serve(cp, config, identity))
