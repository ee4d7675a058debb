"""Runs the control API and the wire listeners in one asyncio event loop.

At start the gateway enrols its own proxy key (``$SDM_HOME/keys/proxy.pem``) so its listeners can
ask for unlocks, and writes ``$SDM_HOME/gateway.json`` with its addresses (``sdm connect`` reads it).
SIGTERM/SIGINT stop the API, let open database sessions finish for a grace period, close the rest,
and sign an audit checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from functools import partial

import uvicorn

from .api.app import create_app
from .audit.chainer import ChainerProcess
from .audit.spool import AuditSpool, recover_spools
from .control.context import Actor, ControlPlane
from .control.live_access import live_access_reason
from .control.proxies import enroll_proxy
from .control.unlock import unlock
from .errors import ListenError, SdmError
from .home import write_private
from .unlock.client import InProcessUnlockClient, ProxyIdentity
from .wire.audit_writer import AuditWriter
from .vault.envelope import ENVELOPE_VERSION
from .wire.login_slots import DEFAULT_PER_ADDRESS as DEFAULT_LOGINS_PER_ADDRESS
from .wire.login_throttle import DEFAULT_LIMIT as DEFAULT_LOGIN_FAILURE_LIMIT

log = logging.getLogger("sdm.gateway")

DEFAULT_API = ("127.0.0.1", 8471)
DEFAULT_POSTGRES = ("127.0.0.1", 15432)
DEFAULT_MYSQL = ("127.0.0.1", 13306)
DRAIN_SECONDS = 30.0
# The event loop and the audit chaining thread share one GIL. A thread that gave it up for a system
# call waits for it back up to the switch interval while the other runs Python, and the chaining
# thread gives it up several times per batch (SQLite, the sink): at CPython's 5 ms it chained about
# a quarter less than at 0.5 ms, where pgbench did not move (docs/benchmarks.md, "The GIL").
GIL_SWITCH_INTERVAL = 0.0005


class _ApiServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after it stops, which would kill us before the listeners drain;
    the gateway handles the signals itself (see ``serve``)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass(frozen=True)
class GatewayConfig:
    api_host: str = DEFAULT_API[0]
    api_port: int = DEFAULT_API[1]
    postgres: tuple[str, int] | None = DEFAULT_POSTGRES
    mysql: tuple[str, int] | None = DEFAULT_MYSQL
    drain_seconds: float = DRAIN_SECONDS
    audit_sync: str = "write"  # write | fsync | commit (see wire/audit_writer.py)
    audit_chainer: str = "thread"  # thread | process: where spooled events are chained (audit/chainer.py)
    warm_logins: bool = True  # PostgreSQL spares (see wire/postgres/spares.py)
    login_failure_limit: int = DEFAULT_LOGIN_FAILURE_LIMIT  # per client address and minute; 0: off
    logins_per_address: int = DEFAULT_LOGINS_PER_ADDRESS  # logins in flight per client address
    jupyterhub_api_url: str | None = None  # a hub whose users' API tokens may mint sessions


def enrol_local_proxy(cp: ControlPlane) -> ProxyIdentity:
    """The gateway process holds $SDM_HOME, which is admin-level trust: it enrols its own key."""
    identity = ProxyIdentity.load_or_create(cp.home.proxy_key_path)
    system = Actor(user_id=0, name="sdm-gateway", is_admin=True)
    enroll_proxy(cp, system, identity.public_key_bytes)
    return identity


def in_process_unlock_client(cp: ControlPlane, identity: ProxyIdentity) -> InProcessUnlockClient:
    """The dual key without an HTTP hop: the same signed request, checked by the same code."""
    return InProcessUnlockClient(identity, partial(unlock, cp), partial(live_access_reason, cp),
                                 lambda token: cp.session_signer.verify(token, cp.now()))


async def serve(cp: ControlPlane, config: GatewayConfig, identity: ProxyIdentity,
                chainer: ChainerProcess | None = None) -> None:
    from .wire.net import is_loopback
    from .wire.postgres.tls import gateway_tls_context

    unlock_client = in_process_unlock_client(cp, identity)
    # Off loopback the API carries API keys, tokens and (admin) passwords: serve it over TLS only.
    api_tls = {} if is_loopback(config.api_host) else {
        "ssl_certfile": str(cp.home.tls_dir / "gateway.pem"), "ssl_keyfile": str(cp.home.tls_dir / "gateway-key.pem")}
    audit = open_audit_writer(cp, config.audit_sync, chainer)  # one writer shared by every listener
    listeners = []
    hub = None  # a HubIdentity when the gateway takes JupyterHub tokens
    addresses = {"api": f"{'https' if api_tls else 'http'}://{config.api_host}:{config.api_port}"}
    api_socket = None
    announced: dict = {}  # "written": this gateway wrote gateway.json
    try:
        # Bound first, by us: a port in use is a clear error before any listener starts.
        api_socket = bind_api_socket(config.api_host, config.api_port)
        # Each listener's modules load only when it runs (`--mysql off` saves ~1.5 MB of RSS).
        if config.postgres is not None:
            from .wire.postgres.server import start_postgres_listener

            with listen_errors("PostgreSQL", "--postgres", *config.postgres):
                pg = await start_postgres_listener(
                    *config.postgres, unlock_client=unlock_client, audit_log=audit,
                    tls_context=gateway_tls_context(cp.home.tls_dir),
                    policy_check=unlock_client.still_allowed_shared, proxy_id=identity.proxy_id,
                    warm_logins=config.warm_logins, login_failure_limit=config.login_failure_limit,
                    logins_per_address=config.logins_per_address)
            listeners.append(pg)
            addresses["postgres"] = f"{config.postgres[0]}:{pg.port}"
        if config.mysql is not None:
            from .wire.mysql.server import start_mysql_listener

            with listen_errors("MySQL", "--mysql", *config.mysql):
                my = await start_mysql_listener(
                    *config.mysql, unlock_client=unlock_client, audit_log=audit,
                    tls_context=gateway_tls_context(cp.home.tls_dir),
                    policy_check=unlock_client.still_allowed_shared, proxy_id=identity.proxy_id,
                    login_failure_limit=config.login_failure_limit,
                    logins_per_address=config.logins_per_address)
            listeners.append(my)
            addresses["mysql"] = f"{config.mysql[0]}:{my.port}"
        if config.jupyterhub_api_url:
            from .control.hub_identity import HubIdentity  # loads httpx: only when hub tokens are taken

            hub = HubIdentity(config.jupyterhub_api_url)
        app = create_app(cp, hub)
        app.state.listeners = {k: v for k, v in addresses.items() if k != "api"}
        app.state.audit_writer = audit  # readers of the log wait for what this gateway recorded
        server = _ApiServer(uvicorn.Config(
            app, host=config.api_host, port=config.api_port, log_level="warning",
            access_log=False, lifespan="off", **api_tls))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.handle_exit, sig, None)
        announce = loop.create_task(_announce_when_up(server, cp, addresses, announced))
        try:
            await server.serve(sockets=[api_socket])
        finally:
            announce.cancel()
    finally:
        if api_socket is not None:
            api_socket.close()
        if announced.get("written"):  # another gateway's file (one that failed to start) stays
            cp.home.gateway_info_path.unlink(missing_ok=True)
        # Side by side: one listener's grace period must not hold the other's clients open.
        await asyncio.gather(*(listener.drain(timeout=config.drain_seconds) for listener in listeners))
        await audit.aclose()
        if hub is not None:
            hub.close()
        try:
            cp.audit.checkpoint()
        except SdmError as exc:
            log.warning("could not sign the closing audit checkpoint: %s", exc.message)


@contextlib.contextmanager
def listen_errors(what: str, option: str, host: str, port: int):
    """A bind failure as a ListenError naming the address and the option that sets it."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is in use (by another gateway or program?)"
        elif isinstance(exc, socket.gaierror):
            reason = f"the host is not known ({exc.strerror})"
        else:  # asyncio's own strerror repeats the address: the system's text is enough
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise ListenError(f"cannot listen on {host}:{port} for {what}: {reason}; "
                          f"choose another address with {option}") from None


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The control API's listening socket, bound here so that uvicorn's own bind failure (a log
    line and an exit) becomes a ListenError like the listeners'."""
    with listen_errors("the control API", "--api", host, port):
        # As uvicorn binds: IPv6 only for an address with a colon ("localhost" stays 127.0.0.1
        # where /etc/hosts lists ::1 first).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock


async def _announce_when_up(server: uvicorn.Server, cp: ControlPlane, addresses: dict, announced: dict) -> None:
    """Write gateway.json only once the API accepts connections (clients read it to find us)."""
    while not server.started:
        await asyncio.sleep(0.01)
    write_private(cp.home.gateway_info_path, json.dumps(addresses).encode())
    announced["written"] = True
    log.info("gateway up: %s", addresses)


def open_audit_writer(cp: ControlPlane, sync: str, chainer: ChainerProcess | None = None) -> AuditWriter:
    """Chain what a gateway that died left in its spool, then open this gateway's own spool
    (chained by ``chainer`` when there is one, else by a thread of this process)."""
    recover_spools(cp.home.audit_spool_dir, cp.audit)
    if sync == "commit":
        return AuditWriter(cp.audit, sync="commit")
    spool = AuditSpool(cp.home.audit_spool_dir)
    spool.open()
    return AuditWriter(chainer or cp.audit, spool=spool, sync=sync)


def start_chainer(cp: ControlPlane, config: GatewayConfig) -> ChainerProcess | None:
    """Fork the audit chainer now, before the event loop and its threads exist (fork is safe only then)."""
    if config.audit_chainer != "process" or config.audit_sync == "commit":
        return None  # commit mode chains each statement before it runs: no spool, nothing to hand over
    return ChainerProcess.start(cp.audit)


def tune_interpreter() -> None:
    """What the gateway's process sets before its event loop starts (the audit benchmark too)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def warn_if_envelopes_unbound(cp: ControlPlane) -> None:
    """An installation from before destination binding opens secrets that are not bound to where
    they go until ``min_envelope_version`` is 2 (docs/configuration.md): say so at every start."""
    if cp.min_envelope_version < ENVELOPE_VERSION:
        log.warning("min_envelope_version is %s in %s: sealed secrets and secret references not bound to "
                    "their destination are still opened; run `sdm master-key rotate --reseal` (and set it to "
                    "%s on every gateway's config.json)", cp.min_envelope_version, cp.home.config_path,
                    ENVELOPE_VERSION)


def run(cp: ControlPlane, config: GatewayConfig, identity: ProxyIdentity) -> None:
    tune_interpreter()
    warn_if_envelopes_unbound(cp)
    chainer = start_chainer(cp, config)
    try:
        try:  # uvloop (the `fast` extra) when installed: a faster loop for the relay
            import uvloop
        except ImportError:
            asyncio.run(serve(cp, config, identity, chainer))
        else:
            uvloop.run(serve(cp, config, identity, chainer))
    finally:
        if chainer is not None:
            chainer.close()
