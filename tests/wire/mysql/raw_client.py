"""A raw MySQL client for the real-server tests: our greeting parser, our HandshakeResponse41 and
scramble, and our ResponseScanner over a plain socket (rows decoded here, never by the scanner)."""

from __future__ import annotations

import random
import socket

from sdm_proxy.wire.mysql.auth import (
    native_password_scramble,
    upstream_capabilities,
)
from sdm_proxy.wire.mysql.commands import ResponseKind, ResponseScanner, classify
from sdm_proxy.wire.mysql.errors import ServerProtocolError
from sdm_proxy.wire.mysql.messages import (
    NATIVE_PASSWORD,
    Cap,
    build_handshake_response,
    parse_auth_reply,
    parse_handshake,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_FRAME,
    MAX_SERVER_CONTROL_PACKET,
    PacketReader,
    PayloadReader,
    frame,
)

CLIENT_CAPS = int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
                  | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS | Cap.TRANSACTIONS | Cap.LONG_PASSWORD
                  | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS)


def read_packet(sock: socket.socket, reader: PacketReader):
    while (packet := reader.next_packet()) is None:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        reader.feed(data)
    return packet


def raw_login(server, key: str, *, password: str | None = None, caps: int = CLIENT_CAPS):
    """Our own login: returns (socket, negotiated caps, greeting, server reply)."""
    login = server.login(key)
    pw = (login.password if password is None else password).encode()
    sock = socket.create_connection((server.host, server.port), timeout=15)
    reader = PacketReader(limit=MAX_SERVER_CONTROL_PACKET, error=ServerProtocolError, expect_seq=0)
    greeting = parse_handshake(read_packet(sock, reader).payload)
    negotiated = upstream_capabilities(caps, greeting.capabilities, tls=False)
    response = build_handshake_response(
        capabilities=negotiated, username=login.username,
        auth_response=native_password_scramble(pw, greeting.scramble), database=server.database,
        auth_plugin=NATIVE_PASSWORD, attrs={"_client_name": "sdm-gateway-test", "program_name": "pytest"})
    sock.sendall(frame(response, 1))
    reader.expect_seq = 2
    reply = parse_auth_reply(read_packet(sock, reader).payload)
    return sock, negotiated, greeting, reply


def command(sock, payload: bytes, caps: int, kind: ResponseKind | None = None, *, seed: int = 0,
             client_file: bytes | None = None):
    """Send one command, follow the response with the scanner fed in random slices; return (scanner, bytes)."""
    if kind is None:
        kind = classify(payload, capabilities=caps, multi_statements_allowed=True).response
    sock.sendall(frame(payload, 0))
    scanner = ResponseScanner(kind, capabilities=caps, seq=1)
    rng = random.Random(seed)
    raw = bytearray()
    while not scanner.done:
        if scanner.wants_client_data:
            assert client_file is not None
            seq = scanner.next_seq
            data = frame(client_file, seq) + frame(b"", (seq + 1) & 0xFF)
            assert scanner.feed_client(data) == len(data)
            sock.sendall(data)
            continue
        data = sock.recv(1 << 20)
        assert data, "server closed the connection"
        pos = 0
        while pos < len(data) and not scanner.done and not scanner.wants_client_data:
            piece = data[pos:pos + rng.choice((1, 2, 3, 5, 7, 64, 4096, 1 << 20))]
            used = scanner.feed(piece)
            raw += piece[:used]
            pos += used
            if used < len(piece):
                break
        assert pos == len(data), "server sent bytes after the end of the response"
    return scanner, bytes(raw)


def text_rows(raw: bytes, caps: int) -> list[list[bytes | None]]:
    """Decode a text result set in the test (the scanner never does)."""
    reader = PacketReader(limit=1 << 30, error=ServerProtocolError, expect_seq=None)
    reader.feed(raw)
    packets = []
    while (p := reader.next_packet()) is not None:
        packets.append(p.payload)
    ncols = PayloadReader(packets[0], error=ServerProtocolError).lenenc_int()
    body = packets[1 + ncols + (0 if caps & Cap.DEPRECATE_EOF else 1):]
    rows = []
    for payload in body:
        if payload[0] == 0xFE and len(payload) < MAX_FRAME:
            break
        r = PayloadReader(payload, error=ServerProtocolError)
        row = []
        for _ in range(ncols):
            if r.peek() == 0xFB:
                r.skip(1)
                row.append(None)
            else:
                row.append(r.lenenc_bytes())
        rows.append(row)
    return rows
