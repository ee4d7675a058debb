"""The gateway's own connection to the real database: reach it, secure it, log in with the secret.

Asyncio around the pure ``auth.UpstreamLogin``: TCP (or a Unix socket when the datasource host is a
path) -> SSLRequest + TLS per the datasource's mode (``disable``; ``require`` = encrypted without
verification; ``verify-full`` = CA file + host name) -> HandshakeResponse41 as the credential's DB
user (never the client's) -> the server's auth plugin exchange -> OK. Every failure is an
``UpstreamLoginError`` with a reason and never the secret; the secret is read (``reveal``) only at
the moment a reply is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from ...unlock.client import DatasourceInfo, UnlockedCredential
from ..net import upstream_tls_context
from .auth import UpstreamLogin
from .errors import ServerProtocolError, UpstreamLoginError
from .flags import Cap
from .handshake import DEFAULT_CHARSET
from .packets import frame

CONNECT_TIMEOUT = 10.0
STREAM_LIMIT = 1 << 18
COM_QUIT = frame(b"\x01", 0)




def _login_tls_mode(ds: DatasourceInfo) -> str:
    if ds.host.startswith("/") or ds.tls in ("disable", "", None):
        return "disable"
    if ds.tls in ("require", "verify-full"):
        return "require"
    raise UpstreamLoginError(f"datasource {ds.name} has TLS mode {ds.tls!r}, which the gateway does not know")


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    thread_id: int
    status: int
    server_version: str
    auth_plugin: str | None
    tls: bool

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead transport
            if not self.writer.is_closing():
                self.writer.write(COM_QUIT)
            self.writer.close()


async def _open(ds: DatasourceInfo, what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = ds.host if ds.host.startswith("/") else f"{ds.host}:{ds.port}"
    try:
        if ds.host.startswith("/"):
            return await asyncio.open_unix_connection(ds.host, limit=STREAM_LIMIT)
        return await asyncio.open_connection(ds.host, ds.port, limit=STREAM_LIMIT)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UpstreamLoginError(f"cannot reach datasource {ds.name} at {where} ({what}): {reason}") from None


async def connect_upstream(cred: UnlockedCredential, *, capabilities: int, charset: int = DEFAULT_CHARSET,
                           attrs: dict[str, str] | None = None, timeout: float = CONNECT_TIMEOUT,
                           what: str = "login") -> UpstreamConnection:
    """Open, secure and log in; returns a connection right after the server's OK."""
    ds = cred.datasource
    try:
        async with asyncio.timeout(timeout):
            return await _connect(cred, capabilities, charset, attrs, what)
    except TimeoutError:
        raise UpstreamLoginError(f"datasource {ds.name} at {ds.host}:{ds.port} did not complete the "
                                 f"login within {timeout:g}s") from None


async def _connect(cred: UnlockedCredential, capabilities: int, charset: int, attrs, what: str
                   ) -> UpstreamConnection:
    ds = cred.datasource
    mode = _login_tls_mode(ds)
    login = UpstreamLogin(username=cred.db_user, database=ds.database, front_capabilities=capabilities,
                          charset=charset or DEFAULT_CHARSET, attrs=attrs, tls=mode,
                          local_socket=ds.host.startswith("/"), server_verified=ds.tls == "verify-full")
    secret_fn = cred.secret.reveal
    reader, writer = await _open(ds, what)
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise UpstreamLoginError(f"datasource {ds.name} closed the connection during the login")
            step = login.receive_data(data, secret_fn)
            if step.send:
                writer.write(step.send)
            if step.start_tls:
                await writer.drain()
                if getattr(reader, "_buffer", b""):
                    raise ServerProtocolError(f"datasource {ds.name} sent unencrypted data after the SSL request")
                ctx = upstream_tls_context(ds.tls, ds.ca_file, UpstreamLoginError)
                try:
                    await writer.start_tls(ctx, server_hostname=ds.host if ds.tls == "verify-full" else None)
                except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
                    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
                    raise UpstreamLoginError(f"TLS handshake with datasource {ds.name} failed: {reason}") from None
                step = login.tls_started(secret_fn)
                writer.write(step.send)
            if step.done:
                break
            await writer.drain()
        hs = login.handshake
        return UpstreamConnection(reader, writer, thread_id=login.thread_id or 0,
                                  status=login.ok.status if login.ok else 2, server_version=hs.server_version,
                                  auth_plugin=login.auth.plugin if login.auth else None,
                                  tls=bool(login.capabilities & Cap.SSL))
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        writer.close()  # a reset mid-login (a restart, a failover): a login error, not an internal one
        raise UpstreamLoginError(f"datasource {ds.name} reset the connection during the login "
                                 f"({type(exc).__name__})") from None
    except ValueError:
        # The reply cannot be framed for this server (review: a clear password over 255 bytes to a
        # server without PLUGIN_AUTH_LENENC_CLIENT_DATA). Its text is not passed on: it may be
        # about the secret.
        writer.close()
        raise UpstreamLoginError(f"cannot answer datasource {ds.name}'s login in a form that server "
                                 "accepts") from None
    except UpstreamLoginError as exc:
        writer.close()
        prefix = "upstream refused the gateway's login"
        if exc.message.startswith(prefix):
            raise UpstreamLoginError(f"datasource {ds.name} refused the login as {cred.db_user}"
                                     + exc.message[len(prefix):], code=exc.code, sqlstate=exc.sqlstate) from None
        raise
    except BaseException:
        writer.close()
        raise


async def run_one_statement(cred: UnlockedCredential, sql: str, *, timeout: float = CONNECT_TIMEOUT
                            ) -> tuple[bytes, int]:
    """Log in, run one statement that answers with OK or ERR (e.g. KILL), log out.

    Returns (the server's answer payload, its sequence id). Used for KILL on a thread that the
    caller's own upstream login may not kill (another credential of the same user). The caller
    hands ``cred`` over without keeping it: its secret is dropped here once the login is done.
    """
    from .packets import MAX_SERVER_CONTROL_PACKET, PacketReader

    name = cred.datasource.name
    up = await connect_upstream(cred, capabilities=int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION), timeout=timeout,
                                attrs={"_client_name": "sdm-gateway", "sdm_purpose": "kill"}, what="kill")
    del cred  # the secret's last reference: only the login needed it (DESIGN §2.1)
    try:
        async with asyncio.timeout(timeout):
            up.writer.write(frame(b"\x03" + sql.encode(), 0))
            reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=1)
            while (packet := reader.next_packet()) is None:
                data = await up.reader.read(1 << 16)
                if not data:
                    raise UpstreamLoginError(f"datasource {name} closed the connection")
                reader.feed(data)
            return packet.payload, packet.seq
    finally:
        up.close()
