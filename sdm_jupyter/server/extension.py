"""``SdmExtension``: the sdm server extension (jupyter-scheduler style: route table as data, thin
handlers over a service object).

    c.SdmExtension.gateway_url = "http://127.0.0.1:8471"   # default: SDM_GATEWAY_URL, $SDM_HOME, this
    c.SdmExtension.manage_gateway = True                   # single-user: run `sdm gateway` ourselves

Kernels started by this server get ``SDM_GATEWAY_URL`` (and ``SDM_GATEWAY_POSTGRES``) in their
environment, so ``%load_ext sdm_jupyter`` works with no setup.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, List, Unicode, default

from ..gateway_client import DEFAULT_GATEWAY_URL, GatewayConfig
from .handlers import ROUTES
from .service import SdmService
from .supervisor import GatewaySupervisor


class SdmExtension(ExtensionApp):
    name = "sdm_jupyter"
    description = "sdm: credential-injecting data access for notebooks"
    load_other_extensions = True

    gateway_url = Unicode(help="URL of the gateway's control API.").tag(config=True)
    postgres_address = Unicode(
        "", help="HOST:PORT of the gateway's PostgreSQL listener, given to kernels as SDM_GATEWAY_POSTGRES "
                 "(default: SDM_GATEWAY_POSTGRES, or gateway_postgres_listen when the gateway is managed)."
    ).tag(config=True)
    manage_gateway = Bool(False, help="Start and supervise `sdm gateway` (single-user setups).").tag(config=True)
    gateway_command = List(Unicode(), help="The command that runs the gateway (found on PATH).").tag(config=True)
    gateway_api_listen = Unicode("127.0.0.1:8471", help="--api of the managed gateway.").tag(config=True)
    gateway_postgres_listen = Unicode("127.0.0.1:15432",
                                      help="--postgres of the managed gateway ('' for none).").tag(config=True)
    set_kernel_env = Bool(True, help="Put the gateway's addresses in kernels' environment.").tag(config=True)
    session_ttl = Unicode("1h", help="Lifetime of the server's own gateway session.").tag(config=True)

    @default("gateway_url")
    def _default_gateway_url(self) -> str:
        if os.environ.get("SDM_GATEWAY_URL"):
            return os.environ["SDM_GATEWAY_URL"].rstrip("/")
        if self.manage_gateway:
            host, _, port = self.gateway_api_listen.rpartition(":")
            return f"http://{host or '127.0.0.1'}:{port}"
        try:
            return GatewayConfig.discover().url
        except Exception:  # noqa: BLE001
            return DEFAULT_GATEWAY_URL

    @default("gateway_command")
    def _default_gateway_command(self) -> list[str]:
        return [shutil.which("sdm") or "sdm", "gateway"]

    def _kernel_postgres(self) -> str:
        if self.postgres_address:
            return self.postgres_address
        if os.environ.get("SDM_GATEWAY_POSTGRES"):
            return os.environ["SDM_GATEWAY_POSTGRES"]
        return self.gateway_postgres_listen if self.manage_gateway else ""

    def initialize_settings(self) -> None:
        self.supervisor: GatewaySupervisor | None = None
        self.service = SdmService(self.gateway_url, session_ttl=self.session_ttl)
        self.settings["sdm_service"] = self.service
        if self.set_kernel_env:
            # Kernels inherit the server's environment (plus JPY_SESSION_NAME, the notebook path).
            os.environ["SDM_GATEWAY_URL"] = self.gateway_url
            if self._kernel_postgres():
                os.environ["SDM_GATEWAY_POSTGRES"] = self._kernel_postgres()
        if self.manage_gateway:
            # The gateway runs as this user: clients here send credentials to its loopback ports
            # only if this uid listens there (listener_owner.py; another user could bind them first).
            os.environ["SDM_GATEWAY_UID"] = str(os.getuid())
        self.log.info("sdm: gateway %s%s", self.gateway_url, " (managed)" if self.manage_gateway else "")

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)

    def gateway_argv(self) -> list[str]:
        # The notebook side speaks PostgreSQL only; leave the MySQL port to whoever needs it.
        argv = [*self.gateway_command, "--api", self.gateway_api_listen, "--mysql", "off",
                "--postgres", self.gateway_postgres_listen or "off"]
        return argv

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if self.manage_gateway and self.supervisor is None:
            health = f"{urlsplit(self.gateway_url)._replace(path='/healthz').geturl()}"
            self.supervisor = GatewaySupervisor(self.gateway_argv(), health_url=health, log=self.log)
            try:
                await self.supervisor.start()
            except OSError as exc:
                self.log.error("sdm: cannot start the gateway (%s): install sdm-proxy or set "
                               "c.SdmExtension.gateway_command", exc)
                self.supervisor = None
                return
            if not await self.supervisor.wait_healthy():
                self.log.warning("sdm: the managed gateway is not answering on %s yet", health)

    async def stop_extension(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        self.service.close()
