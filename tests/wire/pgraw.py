"""A tiny raw PostgreSQL v3 client for tests that need the bytes (SQLSTATEs of login errors, bad input).

libpq reports a refused login as text only; these helpers read the server's ErrorResponse fields so
tests can assert the SQLSTATE. They also send arbitrary bytes for the malformed-input tests.
"""

from __future__ import annotations

import socket
import ssl
import struct

PROTOCOL_V3 = 196608


def startup_packet(params: dict[str, str], version: int = PROTOCOL_V3) -> bytes:
    body = struct.pack("!i", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = recv_exact(sock, 5)
    t, length = header[:1], struct.unpack("!i", header[1:])[0]
    return t, recv_exact(sock, length - 4)


def error_fields(payload: bytes) -> dict[str, str]:
    out, off = {}, 0
    while off < len(payload) and payload[off] != 0:
        end = payload.index(b"\0", off + 1)
        out[chr(payload[off])] = payload[off + 1:end].decode()
        off = end + 1
    return out


def read_until_end(sock: socket.socket, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    """Every message until the server closes (or ReadyForQuery)."""
    sock.settimeout(timeout)
    out = []
    while True:
        try:
            t, payload = read_message(sock)
        except (EOFError, ConnectionError):
            return out
        out.append((t, payload))
        if t == b"Z":
            return out


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def login(host: str, port: int, *, user: str, database: str, password: str | None,
          extra: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
    """Run a login; returns (messages, socket). The last message is 'E' (refused) or 'Z' (ready)."""
    sock = connect(host, port)
    if tls is not None:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(sock, 1) == b"S"
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(startup_packet({"user": user, "database": database, **(extra or {})}))
    msgs = []
    while True:
        try:
            t, payload = read_message(sock)
        except (EOFError, ConnectionError):
            return msgs, sock
        msgs.append((t, payload))
        if t == b"R" and struct.unpack("!i", payload[:4])[0] == 3:
            if password is None:
                return msgs, sock
            sock.sendall(message(b"p", password.encode() + b"\0"))
        elif t in (b"E", b"Z"):
            return msgs, sock


def login_error(host: str, port: int, **kw) -> dict[str, str]:
    msgs, sock = login(host, port, **kw)
    sock.close()
    assert msgs and msgs[-1][0] == b"E", f"expected an ErrorResponse, got {[m[0] for m in msgs]}"
    return error_fields(msgs[-1][1])


# ---- extended-protocol messages (for hand-made pipelines) -----------------------------------------


def parse(name: str, sql: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(portal: str, statement: str) -> bytes:
    return message(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!hhh", 0, 0, 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


def close_statement(name: str) -> bytes:
    return message(b"C", b"S" + name.encode() + b"\0")


def sync() -> bytes:
    return message(b"S")


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def read_until_ready(sock: socket.socket, count: int = 1, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    """Messages up to and including the ``count``-th ReadyForQuery."""
    sock.settimeout(timeout)
    out = []
    while count:
        t, payload = read_message(sock)
        out.append((t, payload))
        if t == b"Z":
            count -= 1
    return out


def data_rows(msgs: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    rows = []
    for t, payload in msgs:
        if t != b"D":
            continue
        n = struct.unpack("!h", payload[:2])[0]
        off, row = 2, []
        for _ in range(n):
            length = struct.unpack("!i", payload[off:off + 4])[0]
            off += 4
            if length < 0:
                row.append(None)
            else:
                row.append(payload[off:off + length].decode())
                off += length
        rows.append(row)
    return rows
