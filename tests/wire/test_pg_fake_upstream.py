"""An upstream that is not the real server: it must not get a session relayed to it.

These are the only wire tests with a hand-written "server": a misbehaving database cannot be made
from the real one. The fake speaks just enough of the protocol to reach each failure.
"""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest
from sdm_proxy.control import catalog, roles
from sdm_proxy.vault.secret import SecretValue

from tests.wire import pgraw

pytestmark = pytest.mark.postgres


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


async def _read_startup(reader):
    length = struct.unpack("!i", await reader.readexactly(4))[0]
    await reader.readexactly(length - 4)


async def _read_msg(reader):
    header = await reader.readexactly(5)
    return header[:1], await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)


async def _scram_up_to_server_first(reader, writer, salt: bytes) -> None:
    """Offer SCRAM, read the client's first message, answer with ``salt`` (and 4096 iterations)."""
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"))
    _, initial = await _read_msg(reader)
    client_first = initial.split(b"\0", 1)[1][4:]
    nonce = dict(p.split(b"=", 1) for p in client_first[3:].split(b","))[b"r"]
    writer.write(_msg(b"R", struct.pack("!i", 11) + b"r=" + nonce + b"srv,s=" + base64.b64encode(salt) + b",i=4096"))
    await writer.drain()


async def forged_scram(reader, writer):
    """Runs SCRAM but cannot produce the right server signature, then claims success anyway."""
    await _scram_up_to_server_first(reader, writer, b"salt")
    await _read_msg(reader)
    writer.write(_msg(b"R", struct.pack("!i", 12) + b"v=" + base64.b64encode(b"\0" * 32)))
    writer.write(_msg(b"R", struct.pack("!i", 0)) + _msg(b"Z", b"I"))
    await writer.drain()


async def skips_scram_final(reader, writer):
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"))
    await _read_msg(reader)
    writer.write(_msg(b"R", struct.pack("!i", 0)) + _msg(b"Z", b"I"))
    await writer.drain()


async def garbage_after_login(reader, writer):
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 5) + b"salt"))  # md5: clear text needs TLS
    await _read_msg(reader)
    writer.write(_msg(b"R", struct.pack("!i", 0)) + _msg(b"K", struct.pack("!ii", 1, 2)) + _msg(b"Z", b"I"))
    await writer.drain()
    await _read_msg(reader)  # the client's query
    writer.write(b"C" + struct.pack("!i", 2))  # a length below 4: not a message at all
    await writer.drain()
    await asyncio.sleep(5)


async def answers_out_of_order(reader, writer):
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 5) + b"salt"))  # md5: clear text needs TLS
    await _read_msg(reader)
    writer.write(_msg(b"R", struct.pack("!i", 0)) + _msg(b"Z", b"I"))
    await writer.drain()
    await _read_msg(reader)  # the client's simple query
    writer.write(_msg(b"2", b""))  # BindComplete, which answers nothing that was asked
    await writer.drain()
    await asyncio.sleep(5)


async def floods_parameter_status(reader, writer):
    """Logs the client in, then sends ParameterStatus without end (a hostile server using our memory)."""
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 0)))
    for i in range(5000):
        writer.write(_msg(b"S", f"p{i}\0".encode() + b"x" * 200 + b"\0"))
        if i % 100 == 0:
            await writer.drain()
    await asyncio.sleep(5)


async def scram_then_md5(reader, writer):
    """Starts SCRAM, then asks for md5: a crackable hash of the password, which must not go out."""
    await _read_startup(reader)
    writer.write(_msg(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"))
    await _read_msg(reader)
    writer.write(_msg(b"R", struct.pack("!i", 5) + b"salt"))
    await writer.drain()
    try:
        kind, body = await asyncio.wait_for(_read_msg(reader), 3)
        assert not body.startswith(b"md5"), "the gateway answered md5 after SCRAM"
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass


async def huge_salt(reader, writer):
    await _scram_up_to_server_first(reader, writer, b"s" * 1000)
    await asyncio.sleep(5)


async def resets_mid_login(reader, writer):
    import socket as _socket

    await _read_startup(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    writer.close()


@pytest.fixture
def fake_upstream(gateway):
    servers = []

    def start(handler, name):
        async def go():
            return await asyncio.start_server(handler, "127.0.0.1", 0)

        server = gateway.loop.run(go())
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        st = gateway.state
        catalog.add_datasource(st.cp, st.admin, name, type="postgres", host="127.0.0.1", port=port, database="x")
        catalog.add_credential(st.cp, st.admin, name, "read-only", username="u",
                               secret=SecretValue(b"fake-upstream-secret-9x"))
        roles.create_role(st.cp, st.admin, f"{name}-r")
        roles.lease(st.cp, st.admin, f"{name}-r", name, "read-only")
        roles.assign_role(st.cp, st.admin, f"{name}-r", "ann")
        return name

    yield start

    async def close(server):  # on the servers' own loop: Server.close() is not thread-safe
        server.close()

    for server in servers:
        gateway.loop.run(close(server))


@pytest.mark.parametrize("handler,message", [
    (forged_scram, "server signature is invalid"),
    (skips_scram_final, "without proving its identity"),
])
def test_an_upstream_that_cannot_prove_scram_is_refused(gateway, fake_upstream, handler, message):
    name = fake_upstream(handler, f"fake-{handler.__name__.replace('_', '-')}")
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=name,
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and message in fields["M"]
    assert "fake-upstream-secret-9x" not in str(fields)


@pytest.mark.parametrize("handler,message", [
    (floods_parameter_status, "messages or"),
    (scram_then_md5, "switched authentication method"),
    (huge_salt, "salt of 1000 bytes"),
    (resets_mid_login, "the connection during the login"),
])
def test_a_hostile_upstream_login_is_refused_cleanly(gateway, fake_upstream, handler, message):
    """Bytes from strangers during the upstream login: a clean 08006 naming the problem, never an
    internal error, a memory blow-up, or a password hash sent after the method changed."""
    name = fake_upstream(handler, f"fake-{handler.__name__.replace('_', '-')}")
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database=name,
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and message in fields["M"], fields
    assert "fake-upstream-secret-9x" not in str(fields)


@pytest.mark.parametrize("handler,message", [
    (garbage_after_login, "invalid message length"),
    (answers_out_of_order, "expected an answer"),
])
def test_a_misbehaving_upstream_ends_only_its_session(gateway, fake_upstream, handler, message):
    name = fake_upstream(handler, f"fake-{handler.__name__.replace('_', '-')}")
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="read-only", database=name,
                             password=gateway.tokens["ann"])
    assert msgs[-1] == (b"Z", b"I")
    sock.sendall(pgraw.query("SELECT 1"))
    answer = pgraw.read_until_end(sock)
    sock.close()
    assert answer and answer[-1][0] == b"E"
    fields = pgraw.error_fields(answer[-1][1])
    assert fields["S"] == "FATAL" and fields["C"] == "08006" and message in fields["M"]
    import psycopg
    with psycopg.connect(**gateway.kwargs("ann")) as conn:
        assert conn.execute("SELECT 'others carry on'").fetchone() == ("others carry on",)
