"""The gateway's own connection to the real database: reach it, secure it, log in with the secret.

Steps, each failing as ``UpstreamLoginError`` (08006) with a reason and never the secret:
TCP or Unix socket -> TLS per the datasource's mode (``disable``, ``require`` = encrypted without
verification, ``verify-full`` = CA file + host name) -> StartupMessage as the credential's DB user ->
SCRAM/md5/cleartext -> collect ParameterStatus/BackendKeyData until ReadyForQuery.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass, field
from typing import Callable

from ...unlock.client import DatasourceInfo, UnlockedCredential
from ..net import upstream_tls_context
from . import framing
from .auth import UpstreamAuthenticator
from .errors import ServerProtocolError, UpstreamLoginError
from .scram import ScramKeyCache

CONNECT_TIMEOUT = 10.0
STREAM_LIMIT = 1 << 18  # StreamReader buffer: transport pauses above 2x this (backpressure)
MAX_STARTUP_REPLY = 1 << 20  # any single message during the upstream login

MAX_LOGIN_NOTICES = 64  # NoticeResponses kept from the login (passed on to the client); the rest dropped
# What a server may send between AuthenticationOk and ReadyForQuery, in all: PostgreSQL sends about
# 15 ParameterStatus messages of a few dozen bytes. More is a hostile or broken server using our memory.
MAX_LOGIN_MESSAGES = 1024
MAX_LOGIN_BYTES = 256 << 10

# Startup parameters passed on to the database (anything else, notably ``options``, which can run
# ``-c role=...`` or ``-c log_statement=none``, is dropped). ``client_encoding`` is forced to UTF8 so
# the audited text decodes exactly as the server parses it.
FORWARDED_PARAMS = frozenset({"application_name", "DateStyle", "TimeZone", "IntervalStyle",
                              "extra_float_digits", "search_path"})
_GATEWAY_PARAMS = frozenset({"user", "database", "client_encoding"})
REQUIRED_ENCODING = "UTF8"


def forwarded_params(client_params: dict[str, str]) -> dict[str, str]:
    """The client's startup parameters passed on: the allowlist, plus client_encoding=UTF8."""
    out = {k: v for k, v in client_params.items() if k in FORWARDED_PARAMS}
    out["client_encoding"] = REQUIRED_ENCODING
    return out


def dropped_params(client_params: dict[str, str]) -> list[str]:
    """Names of the client's startup parameters the gateway does not pass on (for the audit)."""
    return sorted(k for k in client_params if k not in FORWARDED_PARAMS and k not in _GATEWAY_PARAMS)




@dataclass(frozen=True)
class CancelTarget:
    """Where and how to send a CancelRequest for one upstream backend."""

    host: str
    port: int
    tls: str
    ca_file: str | None
    pid: int
    secret: int

    def __repr__(self) -> str:
        return f"CancelTarget({self.host}:{self.port}, pid={self.pid})"


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: list[tuple[str, str]] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)  # raw NoticeResponse messages to pass on
    backend_pid: int = 0
    backend_secret: int = 0
    txn_status: bytes = b"I"
    auth_method: str | None = None
    cancel_target: CancelTarget | None = None

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a dead transport
            pass


async def _open(ds: DatasourceInfo, *, what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = f"{ds.host}:{ds.port}"
    try:
        if ds.host.startswith("/"):
            path = f"{ds.host.rstrip('/')}/.s.PGSQL.{ds.port}"
            reader, writer = await asyncio.open_unix_connection(path, limit=STREAM_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(ds.host, ds.port, limit=STREAM_LIMIT)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UpstreamLoginError(f"cannot reach datasource {ds.name} at {where} ({what}): {reason}") from None
    if ds.tls != "disable" and not ds.host.startswith("/"):
        await _start_tls(reader, writer, ds)
    return reader, writer


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ds: DatasourceInfo) -> None:
    writer.write(framing.ssl_request())
    await writer.drain()
    try:
        answer = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise UpstreamLoginError(f"datasource {ds.name} closed the connection during TLS negotiation") from None
    if answer == b"N":
        raise UpstreamLoginError(f"datasource {ds.name} does not accept TLS, but its TLS mode is {ds.tls}")
    if answer != b"S":
        raise ServerProtocolError(f"datasource {ds.name} answered the SSLRequest with {answer!r}")
    if getattr(reader, "_buffer", b""):
        # Bytes that arrived before the handshake would be read as if they were encrypted
        # (CVE-2021-23222): refuse.
        raise ServerProtocolError(f"datasource {ds.name} sent unencrypted data after accepting TLS")
    ctx = upstream_tls_context(ds.tls, ds.ca_file, UpstreamLoginError)
    try:
        await writer.start_tls(ctx, server_hostname=ds.host if ds.tls == "verify-full" else None)
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        raise UpstreamLoginError(f"TLS handshake with datasource {ds.name} failed: {reason}") from None


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(5)
    mtype, length = struct.unpack("!BI", header)
    if length < 4 or length > MAX_STARTUP_REPLY:
        raise ServerProtocolError(f"upstream sent a message of invalid length {length} during login")
    return mtype, await reader.readexactly(length - 4)


def startup_params(ds: DatasourceInfo, db_user: str, client_params: dict[str, str]) -> dict[str, str]:
    params = {"user": db_user}
    if ds.database:
        params["database"] = ds.database
    params.update(forwarded_params(client_params))
    return params


@dataclass(frozen=True)
class RouteHint:
    """Where the last unlock of (datasource, credential name) led: lets the next login start early."""

    datasource: DatasourceInfo
    db_user: str


Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ROUTE_HINTS_MAX = 1024


class RouteHints:
    """(datasource name, credential name as the client gave them) -> the last ``RouteHint``; bounded."""

    def __init__(self, limit: int = ROUTE_HINTS_MAX):
        self._hints: dict[tuple[str, str], RouteHint] = {}
        self._limit = limit

    def get(self, key: tuple[str, str]) -> RouteHint | None:
        return self._hints.get(key)

    def remember(self, key: tuple[str, str], hint: RouteHint) -> None:
        self._hints.pop(key, None)
        if len(self._hints) >= self._limit:
            self._hints.pop(next(iter(self._hints)))  # the oldest
        self._hints[key] = hint


async def open_early(hint: RouteHint, client_params: dict[str, str], timeout: float = CONNECT_TIMEOUT) -> Opened:
    """Reach the database and send the StartupMessage while the unlock is still running: the
    server forks its backend meanwhile. No secret is involved; ``connect_upstream`` uses the result
    only if the unlock leads to the same place (``matches``), else it is closed."""
    async with asyncio.timeout(timeout):
        reader, writer = await _open(hint.datasource, what="login")
        writer.write(framing.startup_message(startup_params(hint.datasource, hint.db_user, client_params)))
        await writer.drain()
        return reader, writer


def matches(hint: RouteHint, cred: UnlockedCredential) -> bool:
    return hint.datasource == cred.datasource and hint.db_user == cred.db_user


def close_opened(task: asyncio.Future) -> None:
    """Done callback for an early open that will not be used."""
    if not task.cancelled() and task.exception() is None:
        task.result()[1].close()


async def connect_upstream(cred: UnlockedCredential, client_params: dict[str, str], *,
                           scram_cache: ScramKeyCache | None, timeout: float = CONNECT_TIMEOUT,
                           early: asyncio.Future | None = None,
                           secret_fn: Callable[[], bytes] | None = None) -> UpstreamConnection:
    """Open, secure and log in; returns a connection positioned right after ReadyForQuery.

    ``early``: an ``open_early`` task for this very route (startup already sent); when it failed,
    the login opens a connection of its own. ``secret_fn``: where the login gets the password when
    it needs it (default: the unlocked secret; a warm spare passes one that refuses)."""
    ds = cred.datasource
    try:
        async with asyncio.timeout(timeout):
            opened = None
            if early is not None:
                try:
                    opened = await early
                except (UpstreamLoginError, ServerProtocolError, OSError, TimeoutError):
                    opened = None
            return await _connect(cred, client_params, scram_cache, opened, secret_fn or cred.secret.reveal)
    except TimeoutError:
        raise UpstreamLoginError(
            f"datasource {ds.name} at {ds.host}:{ds.port} did not complete the login within {timeout:g}s") from None
    except OSError as exc:  # a reset or a broken pipe mid-login: the database's end, said as such
        raise UpstreamLoginError(f"datasource {ds.name} at {ds.host}:{ds.port} dropped the connection during "
                                 f"the login ({type(exc).__name__})") from None


async def _connect(cred: UnlockedCredential, client_params: dict[str, str], scram_cache,
                   opened: Opened | None, secret_fn: Callable[[], bytes]) -> UpstreamConnection:
    ds = cred.datasource
    reader, writer = opened if opened is not None else await _open(ds, what="login")
    conn = UpstreamConnection(reader, writer)
    try:
        if opened is None:
            writer.write(framing.startup_message(startup_params(ds, cred.db_user, client_params)))
        auth = UpstreamAuthenticator(
            user=cred.db_user, secret_fn=secret_fn, cache=scram_cache,
            cache_scope=(ds.name, ds.host, ds.port, cred.credential, cred.version, cred.db_user),
            cleartext_ok=ds.host.startswith("/") or ds.tls == "verify-full")
        after_ok, after_ok_bytes = 0, 0
        while True:
            await writer.drain()
            try:
                mtype, payload = await _read_message(reader)
            except asyncio.IncompleteReadError:
                raise UpstreamLoginError(f"datasource {ds.name} closed the connection during the login") from None
            if auth.ok:
                after_ok, after_ok_bytes = after_ok + 1, after_ok_bytes + len(payload)
                if after_ok > MAX_LOGIN_MESSAGES or after_ok_bytes > MAX_LOGIN_BYTES:
                    raise ServerProtocolError(f"datasource {ds.name} sent more than {MAX_LOGIN_MESSAGES} messages "
                                              f"or {MAX_LOGIN_BYTES} bytes after the login without being ready")
            if mtype == 82:  # 'R'
                reply = await auth.step_async(payload)
                if reply:
                    writer.write(reply)
            elif mtype == 69:  # 'E'
                fields = framing.parse_error_fields(payload)
                if fields.get("C", "").startswith("28"):
                    auth.forget_cached_keys()
                raise UpstreamLoginError(
                    f"datasource {ds.name} refused the login as {cred.db_user}: "
                    f"{fields.get('M', 'unknown error')} (SQLSTATE {fields.get('C', '?')})")
            elif not auth.ok:
                raise ServerProtocolError(f"datasource {ds.name} sent {chr(mtype)!r} before authentication ended")
            elif mtype == 83:  # 'S'
                name, off = framing.read_cstring(payload)
                value, _ = framing.read_cstring(payload, off)
                conn.parameters.append((name, value))
            elif mtype == 75:  # 'K'
                if len(payload) < 8:
                    raise ServerProtocolError("upstream sent a malformed BackendKeyData")
                conn.backend_pid, conn.backend_secret = struct.unpack_from("!ii", payload)
            elif mtype == 78:  # 'N'
                if len(conn.notices) < MAX_LOGIN_NOTICES:
                    conn.notices.append(struct.pack("!BI", mtype, len(payload) + 4) + payload)
            elif mtype == 90:  # 'Z'
                conn.txn_status = payload[:1] or b"I"
                break
            else:
                raise ServerProtocolError(f"datasource {ds.name} sent unexpected {chr(mtype)!r} during the login")
        conn.auth_method = auth.method
        conn.cancel_target = CancelTarget(ds.host, ds.port, ds.tls, ds.ca_file, conn.backend_pid, conn.backend_secret)
        return conn
    except BaseException:
        conn.close()
        raise


async def send_cancel(target: CancelTarget, *, timeout: float = 5.0) -> None:
    """Send a CancelRequest to the upstream backend and wait for the server to hang up."""
    ds = DatasourceInfo(name="upstream", type="postgres", host=target.host, port=target.port,
                        database=None, tls=target.tls, ca_file=target.ca_file)
    async with asyncio.timeout(timeout):
        reader, writer = await _open(ds, what="cancel")
        try:
            writer.write(framing.cancel_request(target.pid, target.secret))
            await writer.drain()
            await reader.read()  # the server closes once the request is processed
        finally:
            writer.close()
