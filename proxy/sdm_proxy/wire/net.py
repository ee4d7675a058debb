"""What both listeners share about their own sockets."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Awaitable, Callable

from ..addresses import is_loopback  # noqa: F401 - re-exported: listeners and the CLI import it here
from ..unlock.client import UnlockedCredential

# Asked every few seconds per open connection: None keeps it, a string is the reason to close it.
PolicyCheck = Callable[[UnlockedCredential], Awaitable[str | None]]
# Consecutive policy checks that failed (control plane unreachable) before a connection is closed:
# access that cannot be confirmed, a revocation included, must not last for ever.
POLICY_FAILURES_MAX = 3
UNCONFIRMED_ACCESS = "cannot confirm access: control plane unreachable"


def peer_text(peer: object) -> str | None:
    """A socket's peer address as sessions keep it: ``host:port``, ``[v6]:port``, or as it is."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    return str(peer) if peer else None


def upstream_tls_context(mode: str, ca_file: str | None, error: type[Exception]) -> ssl.SSLContext:
    """The client TLS context towards a datasource; ``error`` is the protocol's login error type.

    ``verify-full`` checks the certificate and host name against ``ca_file``; ``require`` encrypts
    without authenticating the server (libpq's sslmode=require, libmysqlclient's REQUIRED). Any
    other mode is an error, never an unverified context. Cached per CA file *content stamp*: a
    replaced CA file (a compromised CA removed) takes effect at the next login, not at a restart."""
    if mode not in ("verify-full", "require"):
        raise error(f"datasource TLS mode {mode!r} is not one the gateway knows (disable, require, verify-full)")
    stamp = None
    if mode == "verify-full" and ca_file:
        try:
            st = os.stat(ca_file)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # _tls_context reports the load failure
    return _tls_context(mode, ca_file, stamp, error)


@functools.lru_cache(maxsize=64)
def _tls_context(mode: str, ca_file: str | None, stamp: tuple | None, error: type[Exception]) -> ssl.SSLContext:
    if mode == "verify-full":
        if not ca_file:
            raise error("datasource TLS mode verify-full needs a CA file")
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise error(f"cannot load the datasource CA file {ca_file}: {exc}") from None
        ctx.check_hostname = True
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def close_login(task: asyncio.Future) -> None:
    """An abandoned upstream login (a done callback): close it if it finished anyway."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def record_beside_login(record: Awaitable[None], login: asyncio.Future) -> None:
    """Await a session's ``session.start`` record while its upstream login runs beside it. If the
    record fails (or this task is cancelled), the login is abandoned: cancelled, or closed once done."""
    try:
        await record
    except BaseException:
        login.cancel()
        login.add_done_callback(close_login)
        raise
