"""A tiny raw MySQL client for the bad-input tests: our own packets over a plain socket."""

from __future__ import annotations

import socket
import struct

from sdm_proxy.wire.mysql.messages import CLEAR_PASSWORD, Cap, build_handshake_response
from sdm_proxy.wire.mysql.packets import frame

from tests.wire.mysql.mysql_stack import DATASOURCE, read_packets

CLIENT_CAPS = int(Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
                  | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.TRANSACTIONS | Cap.MULTI_RESULTS
                  | Cap.CONNECT_WITH_DB | Cap.DEPRECATE_EOF)


def connect(host: str, port: int) -> tuple[socket.socket, bytes]:
    """Connect and read the greeting; returns (socket, greeting payload)."""
    sock = socket.create_connection((host, port), timeout=15)
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:3], "little"):
        chunk = sock.recv(65536)
        assert chunk, "closed before the greeting"
        buf += chunk
    length = int.from_bytes(buf[:3], "little")
    assert buf[3] == 0 and len(buf) == 4 + length, "greeting plus something else"
    return sock, buf[4:]


def hello(credential: str, token: str, database: str | None = DATASOURCE, caps: int = CLIENT_CAPS) -> bytes:
    """A HandshakeResponse41 that sends the token right away with mysql_clear_password (seq 1)."""
    payload = build_handshake_response(capabilities=caps, username=credential, auth_response=token.encode() + b"\0",
                                       database=database, auth_plugin=CLEAR_PASSWORD)
    return frame(payload, 1)


def login(host: str, port: int, credential: str, token: str) -> socket.socket:
    """A logged-in raw connection (the OK has been read)."""
    sock, _ = connect(host, port)
    sock.sendall(hello(credential, token))
    header = _recv_exact(sock, 4)
    body = _recv_exact(sock, int.from_bytes(header[:3], "little"))
    assert body[:1] == b"\x00", f"login failed: {body!r}"
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def exchange(sock: socket.socket, data: bytes) -> list[tuple[int, bytes]]:
    """Send, half-close, and collect every packet until the gateway hangs up."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the gateway may already have hung up on a bad prefix
    try:
        return read_packets(sock)
    finally:
        sock.close()


def err_code(payload: bytes) -> int | None:
    if payload[:1] != b"\xff":
        return None
    return struct.unpack_from("<H", payload, 1)[0]
